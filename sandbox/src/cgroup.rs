//! Cgroup placement and resource limits (memory, cpu, pids) for a container, v1 and v2, through
//! cgroups-rs.
