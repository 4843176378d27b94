//! From observe mode to enforcement: what the audit trail says a workload did that its policy
//! would refuse (`bridle report`), and the smallest policy that would permit it
//! (`bridle suggest`).
//!
//! Pure code over audit records, so both commands work on a copy of a trail, offline.

use bridle_engine::{Code, Effect, Policy};
use bridle_trust::audit::AuditRecord;
use serde::Serialize;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

/// How many files of one directory, at least, make `bridle suggest` permit the directory
/// (`dir/*`) instead of listing them; they must also be at least half of the directory's
/// executables, so that using three tools of /usr/bin never permits the other thousand.
pub const GROUP_AT: usize = 3;

/// What a record says about the policy that judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Observe mode let it through; enforcing would have refused it.
    WouldRefuse,
    /// Refused.
    Refused,
}

/// The outcome a record counts as, if it is a refusal or a would-be refusal.
pub fn outcome(record: &AuditRecord) -> Option<Outcome> {
    if record.code == Code::Observed {
        Some(Outcome::WouldRefuse)
    } else if record.effect != Effect::Permit {
        Some(Outcome::Refused)
    } else {
        None
    }
}

/// One line of the report: how often one operation met one rule in one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportLine {
    /// The workload.
    pub workload: String,
    /// The rule that refused (or would have), or `None` for the policy's default.
    pub rule: Option<String>,
    /// Refused, or would be.
    pub outcome: Outcome,
    /// `exec`, `connect`, `sendto`, `resolve`, `socket`.
    pub action: String,
    /// The file, address or name.
    pub object: String,
    /// How many decisions (a counted record counts as its `count`).
    pub count: u64,
    /// The first and last time (Unix ns).
    pub first: u64,
    /// See `first`.
    pub last: u64,
}

/// A report line's key: workload, rule, outcome, action, object.
type LineKey = (String, Option<String>, Outcome, String, String);

/// Tallies refusals and would-be refusals by workload, rule, outcome and operation.
#[derive(Debug, Default)]
pub struct Report {
    /// Per key: count, first and last time.
    lines: BTreeMap<LineKey, (u64, u64, u64)>,
}

impl Report {
    /// Counts `record` if it is a refusal or a would-be refusal.
    pub fn add(&mut self, record: &AuditRecord) {
        let Some(outcome) = outcome(record) else {
            return;
        };
        let key = (
            record.workload.clone(),
            record.rule.clone(),
            outcome,
            record.action.clone(),
            shown_object(record),
        );
        let entry = self
            .lines
            .entry(key)
            .or_insert((0, record.time, record.time));
        // A counted record stands for that many decisions, taken from `first` on.
        entry.0 += record.decisions();
        entry.1 = entry.1.min(record.first.unwrap_or(record.time));
        entry.2 = entry.2.max(record.last.unwrap_or(record.time));
    }

    /// The tally, by workload, then rule, then operation.
    pub fn lines(&self) -> Vec<ReportLine> {
        self.lines
            .iter()
            .map(
                |((workload, rule, outcome, action, object), (count, first, last))| ReportLine {
                    workload: workload.clone(),
                    rule: rule.clone(),
                    outcome: *outcome,
                    action: action.clone(),
                    object: object.clone(),
                    count: *count,
                    first: *first,
                    last: *last,
                },
            )
            .collect()
    }
}

/// A resolve record's object without the answered addresses (`name TYPE`).
fn shown_object(record: &AuditRecord) -> String {
    if record.action == "resolve" {
        if let Some((asked, _)) = record.object.split_once(" =") {
            return asked.to_owned();
        }
    }
    record.object.clone()
}

/// Gathers what one workload did that its policy would refuse, and writes the policy that
/// would permit it.
#[derive(Debug, Default)]
pub struct Suggestion {
    records: usize,
    execs: BTreeSet<PathBuf>,
    connects: BTreeSet<SocketAddr>,
    /// Unix sockets as rules write them (`unix:/path`, `unix:@name`).
    sockets: BTreeSet<String>,
    names: HashMap<IpAddr, String>,
    raw: bool,
}

impl Suggestion {
    /// Takes one of the workload's records into account. Every resolve record names the
    /// addresses it answered, so a later connect to one of them becomes a rule for the name.
    pub fn add(&mut self, record: &AuditRecord) {
        if record.action == "resolve" {
            if let Some((asked, answered)) = record.object.split_once(" =") {
                let name = asked.split_whitespace().next().unwrap_or_default();
                for addr in answered.split_whitespace() {
                    if let Ok(ip) = addr.parse() {
                        self.names.insert(ip, name.to_owned());
                    }
                }
            }
        }
        if outcome(record).is_none() {
            return;
        }
        self.records += 1;
        match record.action.as_str() {
            "exec" => {
                self.execs.insert(PathBuf::from(&record.object));
            }
            "connect" | "sendto" => {
                if let Ok(addr) = record.object.parse::<SocketAddr>() {
                    self.connects.insert(addr);
                } else if record.object.starts_with("unix:")
                    && bridle_engine::connect::unix_is_canonical(&record.object["unix:".len()..])
                    && bridle_engine::ConnectObject::parse(&record.object).is_ok()
                {
                    // Only a spelling a rule can name: a non-canonical one is refused unless
                    // named exactly, and naming it would teach the agent to use it.
                    self.sockets.insert(record.object.clone());
                }
            }
            "socket" => self.raw = true,
            // A name is permitted through the connect rules that name it.
            _ => {}
        }
    }

    /// How many refusals or would-be refusals it was built from.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The policy text: `default = "refuse"` and one permit rule per kind of operation.
    /// `host` answers how the host sees a path: the file the kernel executes for it (symlinks
    /// followed) and how many executables its directory holds; loaders seen only as a dynamic
    /// binary's interpreter are left out (`is_loader`).
    pub fn policy(&self, name: &str, header: &str, host: &impl Host) -> String {
        let files: BTreeSet<PathBuf> = self
            .execs
            .iter()
            .filter(|p| !host.is_loader(p))
            .map(|p| host.resolve(p))
            .collect();
        let exec = group_paths(&files, |dir| host.executables_in(dir));
        let mut connect: BTreeSet<String> = BTreeSet::new();
        for addr in &self.connects {
            if addr.port() == bridle_common::DNS_PORT {
                continue; // DNS goes to the workload's resolver, whatever the policy says
            }
            let host = match self.names.get(&addr.ip()) {
                Some(name) => name.clone(),
                None => match addr.ip() {
                    IpAddr::V4(ip) => ip.to_string(),
                    IpAddr::V6(ip) => format!("[{ip}]"),
                },
            };
            connect.insert(format!("{host}:{}", addr.port()));
        }
        connect.extend(self.sockets.iter().cloned());
        if self.raw {
            connect.insert("raw".to_owned());
        }
        let mut text = String::new();
        for line in header.lines() {
            text.push_str(&format!("# {line}\n"));
        }
        text.push_str(&format!(
            "name = {}\ndefault = \"refuse\"\n",
            toml_string(name)
        ));
        let mut rule = |rule: &str, key: &str, items: &[String]| {
            if items.is_empty() {
                return;
            }
            text.push_str(&format!(
                "\n[[rule]]\nname = \"{rule}\"\neffect = \"permit\"\n{key} = [\n"
            ));
            for item in items {
                text.push_str(&format!("  {},\n", toml_string(item)));
            }
            text.push_str("]\n");
        };
        rule("observed-exec", "exec", &exec);
        rule(
            "observed-connect",
            "connect",
            &connect.into_iter().collect::<Vec<_>>(),
        );
        text
    }
}

/// How `bridle suggest` sees the host's files.
pub trait Host {
    /// The file the kernel executes for `path` (symlinks followed), or `path` if it is gone.
    fn resolve(&self, path: &Path) -> PathBuf;
    /// How many executable files `dir` holds, if it can be read.
    fn executables_in(&self, dir: &Path) -> Option<usize>;
    /// Whether `path` is a dynamic loader, which every dynamic binary's exec opens as its
    /// interpreter under that exec's own permit.
    fn is_loader(&self, path: &Path) -> bool;
}

/// Lists files, permitting a whole directory (`dir/*`) when `GROUP_AT` or more of them share
/// it and they are at least half of its `executables`.
fn group_paths(
    files: &BTreeSet<PathBuf>,
    executables: impl Fn(&Path) -> Option<usize>,
) -> Vec<String> {
    let mut by_dir: BTreeMap<&Path, Vec<&PathBuf>> = BTreeMap::new();
    for file in files {
        by_dir
            .entry(file.parent().unwrap_or(Path::new("/")))
            .or_default()
            .push(file);
    }
    let mut out = Vec::new();
    for (dir, files) in by_dir {
        let most = executables(dir).is_some_and(|total| files.len() * 2 >= total);
        if files.len() >= GROUP_AT && most {
            out.push(format!("{}/*", dir.display()).replace("//", "/"));
        } else {
            out.extend(files.iter().map(|f| f.display().to_string()));
        }
    }
    out
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Checks a suggested policy the way `bridle policy check` does.
pub fn check(text: &str, origin: &str) -> Result<(), String> {
    Policy::parse(text, origin)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(action: &str, object: &str, code: Code, effect: Effect) -> AuditRecord {
        AuditRecord {
            seq: 1,
            time: 10,
            workload: "w".into(),
            pid: 1,
            uid: 0,
            comm: "c".into(),
            action: action.into(),
            object: object.into(),
            effect,
            code,
            rule: None,
            permit_id: None,
            count: None,
            first: None,
            last: None,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn observed(action: &str, object: &str) -> AuditRecord {
        record(action, object, Code::Observed, Effect::Permit)
    }

    fn permitted(action: &str, object: &str) -> AuditRecord {
        record(action, object, Code::Permitted, Effect::Permit)
    }

    /// /opt/tools holds 4 executables, /usr/bin 1,000.
    struct FakeHost;

    impl Host for FakeHost {
        fn resolve(&self, path: &Path) -> PathBuf {
            path.to_path_buf()
        }
        fn executables_in(&self, dir: &Path) -> Option<usize> {
            match dir.to_str() {
                Some("/opt/tools") => Some(4),
                Some("/usr/bin") => Some(1000),
                _ => None,
            }
        }
        fn is_loader(&self, path: &Path) -> bool {
            path.to_string_lossy().contains("/ld-linux")
        }
    }

    #[test]
    fn the_report_counts_refusals_and_would_be_refusals_only() {
        let mut r = Report::default();
        r.add(&observed("exec", "/usr/bin/curl"));
        r.add(&observed("exec", "/usr/bin/curl"));
        r.add(&permitted("exec", "/usr/bin/true"));
        let mut refused = record(
            "connect",
            "10.0.0.1:80",
            Code::PolicyRefused,
            Effect::Refuse,
        );
        refused.rule = Some("no-lan".into());
        r.add(&refused);
        let lines = r.lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].object, "/usr/bin/curl");
        assert_eq!(lines[0].count, 2);
        assert_eq!(lines[0].outcome, Outcome::WouldRefuse);
        assert_eq!(lines[1].rule.as_deref(), Some("no-lan"));
        assert_eq!(lines[1].outcome, Outcome::Refused);
    }

    #[test]
    fn a_suggestion_groups_directories_names_addresses_and_checks() {
        let mut s = Suggestion::default();
        for f in [
            "/usr/bin/a",
            "/usr/bin/b",
            "/usr/bin/c",
            "/opt/tools/a",
            "/opt/tools/b",
            "/opt/tools/c",
            "/opt/x/tool",
        ] {
            s.add(&observed("exec", f));
        }
        s.add(&observed("exec", "/lib64/ld-linux-x86-64.so.2"));
        s.add(&observed("resolve", "api.example.com A = 192.0.2.7"));
        s.add(&observed("connect", "192.0.2.7:443"));
        s.add(&observed("connect", "198.51.100.1:22"));
        s.add(&observed("sendto", "[2001:db8::1]:123"));
        s.add(&observed("connect", "127.0.0.53:53"));
        s.add(&observed("connect", "unix:/run/app.sock"));
        s.add(&observed("sendto", "unix:@bus"));
        s.add(&observed("connect", "unix:/run/../run/odd.sock"));
        s.add(&permitted("exec", "/usr/bin/permitted"));
        let text = s.policy("agent", "suggested", &FakeHost);
        check(&text, "suggested.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(text.contains("\"/opt/tools/*\""), "{text}");
        assert!(!text.contains("\"/usr/bin/*\""), "{text}");
        assert!(text.contains("\"/usr/bin/b\""), "{text}");
        assert!(text.contains("\"/opt/x/tool\""), "{text}");
        assert!(!text.contains("ld-linux"), "{text}");
        assert!(!text.contains("permitted"), "{text}");
        assert!(text.contains("\"api.example.com:443\""), "{text}");
        assert!(text.contains("\"198.51.100.1:22\""), "{text}");
        assert!(text.contains("\"[2001:db8::1]:123\""), "{text}");
        assert!(!text.contains(":53\""), "{text}");
        assert!(text.contains("\"unix:/run/app.sock\""), "{text}");
        assert!(text.contains("\"unix:@bus\""), "{text}");
        assert!(!text.contains("odd.sock"), "{text}");
        assert_eq!(s.records(), 16);
    }

    #[test]
    fn an_empty_suggestion_is_a_valid_policy_that_refuses_everything() {
        let text = Suggestion::default().policy("x", "", &FakeHost);
        check(&text, "empty.toml").expect("valid");
        assert!(!text.contains("[[rule]]"));
    }
}
