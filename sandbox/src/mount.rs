//! Mounting: the rootfs mounts (overlay from a snapshotter, binds), undone in reverse; option
//! parsing (`ro`, `rbind`, propagation, data) shared by rootfs and spec mounts.
