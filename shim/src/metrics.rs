//! The engine's cgroup figures in containerd's cgroups metrics types (`io.containerd.cgroups.v1
//! .Metrics` on a cgroup v1 host, `io.containerd.cgroups.v2.Metrics` on v2), as the runc shim
//! reports them for `ctr task metrics` and CRI's ContainerStats.

use cgroups_rs::CgroupStats;
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};

/// The figures as the metrics message containerd expects for this host's cgroup version.
pub fn to_metrics(stats: &CgroupStats, cgroup_v2: bool) -> Box<dyn MessageDyn> {
    if cgroup_v2 {
        Box::new(to_v2(stats))
    } else {
        Box::new(to_v1(stats))
    }
}

fn to_v1(s: &CgroupStats) -> v1::Metrics {
    let mut m = v1::Metrics::new();
    m.pids = MessageField::some(v1::PidsStat {
        current: s.pids.current,
        limit: s.pids.limit.max(0) as u64,
        ..Default::default()
    });
    let mut cpu = v1::CPUStat::new();
    if let Some(acct) = &s.cpu.cpu_acct {
        // cpuacct.stat counts clock ticks; containerd reports nanoseconds.
        let tick = nanos_per_tick();
        cpu.usage = MessageField::some(v1::CPUUsage {
            total: acct.total_usage,
            kernel: acct.system_usage * tick,
            user: acct.user_usage * tick,
            per_cpu: acct.usage_percpu.clone(),
            ..Default::default()
        });
    }
    if let Some(t) = &s.cpu.cpu_throttling {
        cpu.throttling = MessageField::some(v1::Throttle {
            periods: t.periods,
            throttled_periods: t.throttled_periods,
            throttled_time: t.throttled_time,
            ..Default::default()
        });
    }
    m.cpu = MessageField::some(cpu);
    let mem = &s.memory;
    let entry = |e: &Option<cgroups_rs::stats::MemoryStats>| {
        MessageField::from_option(e.as_ref().map(|e| v1::MemoryEntry {
            usage: e.usage,
            max: e.max_usage,
            limit: e.limit.max(0) as u64,
            failcnt: e.fail_cnt,
            ..Default::default()
        }))
    };
    m.memory = MessageField::some(v1::MemoryStat {
        cache: mem.cache,
        rss: mem.rss,
        rss_huge: mem.rss_huge,
        mapped_file: mem.mapped_file,
        dirty: mem.dirty,
        writeback: mem.writeback,
        pg_pg_in: mem.pgpgin,
        pg_pg_out: mem.pgpgout,
        pg_fault: mem.pgfault,
        pg_maj_fault: mem.pgmajfault,
        inactive_anon: mem.inactive_anon,
        active_anon: mem.active_anon,
        inactive_file: mem.inactive_file,
        active_file: mem.active_file,
        unevictable: mem.unevictable,
        hierarchical_memory_limit: mem.hierarchical_memory_limit.max(0) as u64,
        hierarchical_swap_limit: mem.hierarchical_memsw_limit.max(0) as u64,
        total_cache: mem.total_cache,
        total_rss: mem.total_rss,
        total_rss_huge: mem.total_rss_huge,
        total_mapped_file: mem.total_mapped_file,
        total_dirty: mem.total_dirty,
        total_writeback: mem.total_writeback,
        total_pg_pg_in: mem.total_pgpgin,
        total_pg_pg_out: mem.total_pgpgout,
        total_pg_fault: mem.total_pgfault,
        total_pg_maj_fault: mem.total_pgmajfault,
        total_inactive_anon: mem.total_inactive_anon,
        total_active_anon: mem.total_active_anon,
        total_inactive_file: mem.total_inactive_file,
        total_active_file: mem.total_active_file,
        total_unevictable: mem.total_unevictable,
        usage: entry(&mem.memory),
        swap: entry(&mem.memory_swap),
        kernel: entry(&mem.kernel_memory),
        ..Default::default()
    });
    m
}

/// Nanoseconds per USER_HZ clock tick.
fn nanos_per_tick() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / if hz > 0 { hz as u64 } else { 100 }
}

fn to_v2(s: &CgroupStats) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    m.pids = MessageField::some(v2::PidsStat {
        current: s.pids.current,
        limit: s.pids.limit.max(0) as u64,
        ..Default::default()
    });
    let mut cpu = v2::CPUStat::new();
    if let Some(acct) = &s.cpu.cpu_acct {
        // cgroup v2 counts microseconds; cgroups-rs reports nanoseconds like v1.
        cpu.usage_usec = acct.total_usage / 1000;
        cpu.user_usec = acct.user_usage / 1000;
        cpu.system_usec = acct.system_usage / 1000;
    }
    if let Some(t) = &s.cpu.cpu_throttling {
        cpu.nr_periods = t.periods;
        cpu.nr_throttled = t.throttled_periods;
        cpu.throttled_usec = t.throttled_time / 1000;
    }
    m.cpu = MessageField::some(cpu);
    let usage = s.memory.memory.as_ref();
    m.memory = MessageField::some(v2::MemoryStat {
        usage: usage.map_or(0, |u| u.usage),
        usage_limit: usage.map_or(0, |u| u.limit.max(0) as u64),
        anon: s.memory.rss,
        file: s.memory.cache,
        file_mapped: s.memory.mapped_file,
        file_dirty: s.memory.dirty,
        file_writeback: s.memory.writeback,
        inactive_anon: s.memory.inactive_anon,
        active_anon: s.memory.active_anon,
        inactive_file: s.memory.inactive_file,
        active_file: s.memory.active_file,
        unevictable: s.memory.unevictable,
        pgfault: s.memory.pgfault,
        pgmajfault: s.memory.pgmajfault,
        ..Default::default()
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_figures_carry_over() {
        let mut s = CgroupStats::default();
        s.pids.current = 3;
        s.pids.limit = 100;
        s.memory.memory = Some(cgroups_rs::stats::MemoryStats {
            usage: 4096,
            max_usage: 8192,
            limit: 1 << 20,
            fail_cnt: 1,
        });
        s.memory.rss = 1234;
        let m = to_v1(&s);
        assert_eq!(m.pids.current, 3);
        assert_eq!(m.pids.limit, 100);
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, 1 << 20);
        assert_eq!(m.memory.rss, 1234);
    }

    #[test]
    fn unlimited_becomes_zero_and_v2_uses_usec() {
        let mut s = CgroupStats::default();
        s.pids.limit = -1;
        s.cpu.cpu_acct = Some(cgroups_rs::stats::CpuAcctStats {
            user_usage: 2000,
            system_usage: 1000,
            total_usage: 3000,
            usage_percpu: vec![],
        });
        assert_eq!(to_v1(&s).pids.limit, 0);
        assert_eq!(to_v2(&s).cpu.usage_usec, 3);
    }
}
