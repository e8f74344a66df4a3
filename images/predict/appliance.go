package predict

import (
	"github.com/dataembassy/embassy/attest/measure"
	"github.com/dataembassy/embassy/attest/tpm"
)

// PCRAppliance is PCR 15, the appliance's own measurement log.
const PCRAppliance = tpm.PCRAppliance

// AppliancePCR predicts PCR 15 for an appliance running binary with
// config: before anything else runs it measures them as its measurement
// plan says (attest/measure.ApplianceEvents), from PCR 15's reset value.
func AppliancePCR(binary, config []byte) ([]byte, error) {
	return measure.Replay(measure.ApplianceEvents(binary, config))
}

// InitramfsPCR predicts PCR 15 from an appliance initramfs alone: the
// appliance binary and configuration are read from their paths in it
// (attest/measure.BinaryFile and ConfigFile, where initramfs.Build puts
// them). initrd is a gzip compressed or plain newc cpio archive, as
// initramfs.Build writes it; only its first archive is read, and a path
// that occurs twice is refused (ErrInitramfs).
func InitramfsPCR(initrd []byte) ([]byte, error) {
	files, err := cpioFiles(initrd, measure.BinaryFile, measure.ConfigFile)
	if err != nil {
		return nil, err
	}
	return AppliancePCR(files[measure.BinaryFile], files[measure.ConfigFile])
}
