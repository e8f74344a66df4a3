package kernelclient

// ConfigPath is where the guest init reads its GuestConfig (JSON), packed
// into the initramfs by the host test.
const ConfigPath = "/kernelclient.json"

// ModulesDir holds the kernel modules in the initramfs, with a file
// "order" naming them one a line in load order.
const ModulesDir = "/lib/kernelclient/modules"

// GuestConfig tells the guest init what to connect to and what to do.
type GuestConfig struct {
	// Server is the NBD server's host:port as the guest reaches it
	// (10.0.2.2 is the host's loopback under QEMU user networking).
	Server string `json:"server"`
	// ServerName is the name the server certificate is verified against.
	ServerName string `json:"server_name"`
	// CA, Cert and Key are PEM: the CA the server certificate chains to,
	// and the client certificate and key.
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
	// Address is the guest's static address in CIDR form (e.g.
	// 10.0.2.15/24), on interface eth0.
	Address string `json:"address"`
	// ModuleParams are module parameters by module name (e.g. "nbd":
	// "nbds_max=2 max_part=0").
	ModuleParams map[string]string `json:"module_params,omitempty"`
	// Exports are connected one after another.
	Exports []GuestExport `json:"exports"`
}

// GuestExport is one export to connect and exercise.
type GuestExport struct {
	// Name is the export name.
	Name string `json:"name"`
	// Device is the NBD device node (e.g. /dev/nbd0).
	Device string `json:"device"`
	// BlockSize is the logical block size given to the kernel
	// (NBD_SET_BLKSIZE); 512 makes it send 512-byte requests.
	BlockSize int `json:"block_size"`
	// Connections is the number of connections handed to the kernel for
	// this device (default 1; more needs NBD_FLAG_CAN_MULTI_CONN).
	Connections int `json:"connections,omitempty"`
	// ReadOnly runs CheckReadOnly instead of Run: the export is expected
	// to be read-only.
	ReadOnly bool `json:"read_only,omitempty"`
	// Netlink attaches the device through the generic netlink interface
	// (NBD_CMD_CONNECT), nbd-client's default, instead of the ioctls.
	Netlink bool `json:"netlink,omitempty"`
}
