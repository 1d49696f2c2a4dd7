"""qemu_device: a vfio-user server emulating a PCIe NIC with a real MSI-X table and PBA.

Layout: protocol (wire format), connection (sans-I/O framing and state), handlers
(dispatch), device/ (config space, registers, MSI-X, DMA, the NIC), transport and server
(sockets and the epoll loop), control and eventlog, cli.
"""
