package measure

// The appliance's measurement plan: what cmd/embassy-appliance measures
// into PCR 15 before anything else runs, and where in the initramfs it
// finds those files. The appliance, the initramfs builder and the
// predictor (images/predict) all read it from here, so a change to the
// plan changes all three.
const (
	// TypeBinary is the event type of the appliance's own program.
	TypeBinary = "binary"
	// TypeConfig is the event type of the appliance's configuration.
	TypeConfig = "config"

	// BinaryFile is the appliance program's path in the initramfs,
	// relative to its root (as cpio archives name files).
	BinaryFile = "bin/embassy-appliance"
	// ConfigFile is the appliance configuration's path in the initramfs,
	// relative to its root.
	ConfigFile = "etc/embassy/appliance.json"

	// BinaryPath is BinaryFile as the running appliance sees it: the file
	// it reads itself from and the name of its binary event.
	BinaryPath = "/" + BinaryFile
	// ConfigPath is ConfigFile as the running appliance sees it: its
	// default configuration and the name of its config event.
	ConfigPath = "/" + ConfigFile
)

// Subject is one thing the appliance measures: the event's type and name,
// and the content whose digest the event carries.
type Subject struct {
	Type string
	Name string
	Data []byte
}

// Event returns the event measuring s.
func (s Subject) Event() Event { return NewEvent(s.Type, s.Name, s.Data) }

// AppliancePlan returns, in measurement order, what the appliance measures
// at start: its binary, then its configuration, each named by its absolute
// path in the initramfs.
func AppliancePlan(binary, config []byte) []Subject {
	return []Subject{
		{Type: TypeBinary, Name: BinaryPath, Data: binary},
		{Type: TypeConfig, Name: ConfigPath, Data: config},
	}
}

// ApplianceEvents returns the events of AppliancePlan: the log an
// appliance with this binary and configuration writes before it attests.
func ApplianceEvents(binary, config []byte) []Event {
	plan := AppliancePlan(binary, config)
	ev := make([]Event, len(plan))
	for i, s := range plan {
		ev[i] = s.Event()
	}
	return ev
}
