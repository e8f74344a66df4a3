package predict

// KernelBootEvents returns the PCR 9 events of a direct kernel boot
// (QEMU -kernel/-initrd) through OVMF: the Linux EFI stub measures the
// command line, to which OVMF's QEMU loader appends " initrd=initrd", and
// then the initrd file.
func KernelBootEvents(cmdline string, initrd []byte) []Event {
	return []Event{
		{PCRKernelStub, EvEventTag, LoadOptionsDigest(cmdline + " initrd=initrd"), "LOADED_IMAGE::LoadOptions"},
		{PCRKernelStub, EvEventTag, sum(initrd), "Linux initrd"},
	}
}

// KernelBootPCR9 predicts PCR 9 of a direct kernel boot through OVMF
// (KernelBootEvents).
func KernelBootPCR9(cmdline string, initrd []byte) []byte {
	return Replay(KernelBootEvents(cmdline, initrd), PCRKernelStub)[PCRKernelStub]
}
