"""The lab: the rig's processes (QEMU, the device server, the guest agent's channel, the
console) and the views they give of a vector (docs/architecture.md)."""
