//! Host names for the workloads the daemon confines: one DNS resolver (crate::dns) per
//! workload whose policy has host rules.
//!
//! One per workload rather than one shared: the kernel redirects a workload's DNS traffic to
//! the address its `DNS_REDIRECT` entry names, and replies from that address get their source
//! rewritten back, so a resolver's own loopback port is what tells it which workload asks (a
//! loopback datagram carries no cgroup), and each resolver writes under its workload's policy
//! slot with its permits' ids.
//!
//! The resolver follows its workload through every change of slot: a reload or a restored
//! policy writes the new slot's entries, the resolver judges the names it answered so far by
//! the new policy and writes their addresses under the new slot, and only then is the
//! workload pointed at it (answers wait meanwhile), so an address resolved before a reload
//! keeps working if the new policy still allows its name, and no answer lands in a slot the
//! workload has left. A refuse-all quarantine refuses every name. Renewals renew the DNS
//! entries' permits too. Releasing a workload stops its resolver and removes its redirect; a
//! stopping daemon leaves the redirects in place, so while no daemon runs a workload's DNS
//! queries go unanswered rather than to the server it named, and a restarted daemon points
//! them at a new resolver.

use super::Daemon;
use crate::{
    dns::{DnsConfig, DnsReport, Outcome, Resolver, View},
    fanotify::bpfmap::BpfMap,
    issuer::Issuer,
};
use anyhow::Result;
use bridle_common::{Workload, WORKLOAD_OBSERVE};
use bridle_engine::{Compiled, QuarantineAction};
use serde_json::json;
use std::{
    collections::BTreeMap,
    sync::mpsc,
    time::{Duration, Instant},
};
use tracing::{debug, error, info, warn};

/// How often expired DNS entries are removed from the maps (the kernel ignores an expired
/// entry on its own; this keeps the maps small).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The resolvers of the confined workloads.
pub(super) struct Resolvers {
    running: BTreeMap<u64, Resolver>,
    /// Why a workload's resolver could not start (until it does).
    failed: BTreeMap<u64, String>,
    reports_tx: mpsc::Sender<DnsReport>,
    reports: mpsc::Receiver<DnsReport>,
    next_sweep: Instant,
}

impl Resolvers {
    /// None running yet.
    pub(super) fn new() -> Resolvers {
        let (reports_tx, reports) = mpsc::channel();
        Resolvers {
            running: BTreeMap::new(),
            failed: BTreeMap::new(),
            reports_tx,
            reports,
            next_sweep: Instant::now() + SWEEP_EVERY,
        }
    }

    /// After workload `id`'s permits were renewed and its entries rewritten: renews the
    /// permits its DNS entries carry (`stamp` is the workload's `Issuer::stamp`).
    pub(super) fn restamp(&self, id: u64, stamp: impl Fn(u32) -> Option<(u64, u64)>) {
        if let Some(r) = self.running.get(&id) {
            if let Err(err) = r.restamp(stamp) {
                error!(cgroup = id, "renewing the DNS entries' permits: {err:#}");
            }
        }
    }
}

fn view_of(compiled: &Compiled, config: Workload, issuer: &Issuer) -> View {
    View::new(
        compiled,
        config.slot,
        config.flags & WORKLOAD_OBSERVE != 0,
        |rule| issuer.stamp(rule),
    )
}

impl Daemon {
    /// Points workload `id` at `config.slot`, whose entries are written already. A running
    /// resolver moves along in the same step: the addresses of the names it answered are
    /// judged by `compiled` and written under the new slot before the switch, and no answer
    /// is written meanwhile.
    pub(super) fn switch_slot(
        &mut self,
        id: u64,
        config: Workload,
        compiled: &Compiled,
        issuer: &Issuer,
    ) -> Result<()> {
        let Some(resolver) = self.resolvers.running.get(&id) else {
            return self.enforcer.point(id, config);
        };
        if compiled.hosts.is_empty() {
            // sync_resolver stops it once the workload's state is updated.
            return self.enforcer.point(id, config);
        }
        let view = view_of(compiled, config, issuer);
        let settings = self.config.resolver.settings();
        let enforcer = &mut self.enforcer;
        match resolver.rebind(settings, view, || enforcer.point(id, config))? {
            Ok(0) => {}
            Ok(n) => info!(cgroup = id, "{n} resolved address entries carried to the new policy slot"),
            Err(err) => warn!(
                cgroup = id,
                "carrying resolved addresses to the new policy slot: {err:#}; the workload resolves them again"
            ),
        }
        Ok(())
    }

    /// Brings workload `id`'s resolver in line with its state: started when its policy has
    /// host rules, stopped when it has none or the workload is gone, refusing every name under
    /// a refuse-all quarantine, and on the workload's current slot and the configured settings.
    pub(super) fn sync_resolver(&mut self, id: u64) {
        let Some(w) = self.workloads.get(&id) else {
            self.stop_resolver(id);
            return;
        };
        if w.compiled.hosts.is_empty() {
            self.stop_resolver(id);
            return;
        }
        let view = if w.quarantined == Some(QuarantineAction::RefuseAll) {
            View::refuse_all(w.config.slot)
        } else {
            view_of(&w.compiled, w.config, &w.issuer)
        };
        let settings = self.config.resolver.settings();
        let path = w.path.display().to_string();
        if let Some(r) = self.resolvers.running.get(&id) {
            if r.slot() == view.slot
                && r.settings() == settings
                && r.quarantined() == view.quarantined
            {
                return;
            }
            // The workload points at this slot already (a quarantine, or new settings).
            match r.rebind(settings, view, || Ok(())) {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => warn!(cgroup = %path, "carrying resolved addresses: {err:#}"),
                Err(err) => error!(cgroup = %path, "moving the resolver: {err:#}"),
            }
            return;
        }
        let started = (|| {
            let map = |name: &str| self.enforcer.map_fd(name).map(BpfMap::new);
            Resolver::start(DnsConfig {
                settings,
                workload: id,
                view,
                maps: [map(crate::kernel::NET_RULES)?, map("DNS_REDIRECT")?],
                reports: self.resolvers.reports_tx.clone(),
            })
        })();
        match started {
            Ok(r) => {
                info!(
                    cgroup = %path,
                    address = %r.address(),
                    upstream = %settings.upstream,
                    "resolver started: the workload's DNS queries go to {}, allowed names to {}",
                    r.address(),
                    settings.upstream
                );
                self.resolvers.failed.remove(&id);
                self.resolvers.running.insert(id, r);
            }
            Err(err) => {
                // Fail closed: the workload's names stay unresolved (its queries meet the
                // connect rules, or a stale redirect that nothing answers).
                error!(cgroup = %path, "the workload's DNS resolver did not start, its host rules permit nothing: {err:#}");
                self.resolvers.failed.insert(id, format!("{err:#}"));
            }
        }
    }

    /// Stops workload `id`'s resolver and removes its redirect (also one an earlier daemon
    /// left), so its DNS traffic meets its connect rules again.
    pub(super) fn stop_resolver(&mut self, id: u64) {
        self.resolvers.failed.remove(&id);
        if let Some(r) = self.resolvers.running.remove(&id) {
            let address = r.address();
            // Dropping it joins its threads and deletes the redirect.
            drop(r);
            info!(cgroup = id, %address, "resolver stopped");
            return;
        }
        let removed = self
            .enforcer
            .map_fd("DNS_REDIRECT")
            .and_then(|fd| Ok(BpfMap::new(fd).delete(&id)?));
        if let Err(err) = removed {
            error!(cgroup = id, "removing the DNS redirect: {err:#}");
        }
    }

    /// Stops every resolver at shutdown, leaving the redirects: the next daemon points them at
    /// its own resolvers, and meanwhile no query leaves by a way the policy did not decide.
    pub(super) fn stop_resolvers(&mut self) {
        for r in self.resolvers.running.values() {
            r.signal_stop();
        }
        for (_, mut r) in std::mem::take(&mut self.resolvers.running) {
            r.keep_redirect();
        }
        self.record_dns();
    }

    /// Removes expired DNS entries, once a second.
    pub(super) fn sweep_resolvers(&mut self, now: Instant) {
        if now < self.resolvers.next_sweep {
            return;
        }
        self.resolvers.next_sweep = now + SWEEP_EVERY;
        for (id, r) in &self.resolvers.running {
            if let Err(err) = r.sweep() {
                warn!(cgroup = id, "removing expired DNS entries: {err:#}");
            }
        }
    }

    /// Appends the resolvers' decisions to the audit trail and hands them to followers;
    /// whether there were any.
    pub(super) fn record_dns(&mut self) -> bool {
        let mut recorded = false;
        while let Ok(report) = self.resolvers.reports.try_recv() {
            let Some(w) = self.workloads.get(&report.workload) else {
                continue;
            };
            recorded = true;
            let workload = w.path.display().to_string();
            let line = report.line(|_| report.rule_name.clone());
            let line = line.trim_start_matches("bridle: ");
            match report.outcome {
                Outcome::Permitted(_) => debug!(cgroup = %workload, pid = report.pid, "{line}"),
                Outcome::UpstreamTimeout | Outcome::Failed(_) => {
                    warn!(cgroup = %workload, pid = report.pid, "{line}")
                }
                _ => info!(cgroup = %workload, pid = report.pid, "{line}"),
            }
            // Refused names do not count towards quarantine: one lookup is several queries
            // (A and AAAA, each search domain), and a refused name opens nothing.
            let fields = report.audit_fields(workload);
            self.publish(&fields, None);
            if let Err(err) = self.audit.append(fields) {
                error!("appending to the audit trail: {err:#}");
            }
        }
        recorded
    }

    /// Workload `id`'s resolver for `bridle status`: address, upstream and counters, the
    /// error that kept it from starting, or null when its policy has no host rules.
    pub(super) fn resolver_status(&self, id: u64) -> serde_json::Value {
        if let Some(r) = self.resolvers.running.get(&id) {
            let stats = r.stats();
            let settings = r.settings();
            return json!({
                "address": r.address().to_string(),
                "slot": format!("{:016x}", r.slot()),
                "upstream": settings.upstream.to_string(),
                "timeout_ms": settings.timeout.as_millis() as u64,
                "ttl_min_s": settings.ttl_min.as_secs(),
                "ttl_max_s": settings.ttl_max.as_secs(),
                "refusing_all": r.quarantined(),
                "permitted": stats.permitted,
                "refused": stats.refused,
                "observed": stats.observed,
                "failed": stats.failed,
                "addresses": stats.addresses,
            });
        }
        match self.resolvers.failed.get(&id) {
            Some(err) => json!({ "error": err }),
            None => serde_json::Value::Null,
        }
    }
}
