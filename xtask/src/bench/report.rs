//! Figures and the Markdown / CSV report.

use std::{fmt::Write as _, time::Duration};

/// One measured figure: a sample per round.
pub struct Figure {
    /// The report section it belongs to.
    pub section: &'static str,
    /// What was measured.
    pub name: String,
    /// The unit of the samples.
    pub unit: &'static str,
    /// One value per round.
    pub samples: Vec<f64>,
    /// The figure this one is compared with (its ratio is median / reference median).
    pub reference: Option<String>,
    /// A remark printed with the figure.
    pub remark: String,
}

impl Figure {
    /// A figure with no samples yet.
    pub fn new(section: &'static str, name: impl Into<String>, unit: &'static str) -> Self {
        Figure {
            section,
            name: name.into(),
            unit,
            samples: vec![],
            reference: None,
            remark: String::new(),
        }
    }

    /// Compares this figure with `reference` (a name in the same report).
    pub fn against(mut self, reference: &str) -> Self {
        self.reference = Some(reference.to_owned());
        self
    }

    /// The median (the upper one for an even count).
    pub fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// The smallest sample.
    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// The largest sample.
    pub fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// Everything one run measured.
pub struct Report {
    rounds: usize,
    figures: Vec<Figure>,
    notes: Vec<(&'static str, String)>,
    load_start: String,
}

impl Report {
    /// An empty report for `rounds` interleaved rounds.
    pub fn new(rounds: usize) -> Self {
        Report {
            rounds,
            figures: vec![],
            notes: vec![],
            load_start: loadavg(),
        }
    }

    /// Adds figures.
    pub fn add(&mut self, figures: impl IntoIterator<Item = Figure>) {
        self.figures.extend(figures);
    }

    /// Adds a remark to a section.
    pub fn note(&mut self, section: &'static str, text: impl Into<String>) {
        self.notes.push((section, text.into()));
    }

    /// The ratio to the reference: the median of the per-round ratios when both figures have
    /// one sample per round (each pair ran minutes apart at most, so load that drifts over
    /// the run cancels out), else the ratio of the medians.
    fn ratio(&self, f: &Figure) -> Option<f64> {
        let r = f.reference.as_ref()?;
        let base = self.figures.iter().find(|g| &g.name == r)?;
        if f.samples.len() == base.samples.len() && !f.samples.is_empty() {
            let mut per_round: Vec<f64> = f
                .samples
                .iter()
                .zip(&base.samples)
                .map(|(a, b)| a / b)
                .collect();
            per_round.sort_by(|a, b| a.total_cmp(b));
            return per_round.get(per_round.len() / 2).copied();
        }
        Some(f.median() / base.median())
    }

    /// The Markdown report.
    pub fn markdown(&self, took: Duration) -> String {
        let mut md = String::from("# bridle benchmark report\n\n");
        let _ = writeln!(
            md,
            "Machine: Linux {} · {} CPUs · load average at start {} and at end {} · {} \
             interleaved rounds per figure · run took {:.0} s. Ratio: the median over rounds of \
             the figure's ratio to its reference in the same round.\n",
            uname_r(),
            nproc(),
            self.load_start,
            loadavg(),
            self.rounds,
            took.as_secs_f64()
        );
        let mut sections: Vec<&'static str> = vec![];
        for s in self
            .figures
            .iter()
            .map(|f| f.section)
            .chain(self.notes.iter().map(|n| n.0))
        {
            if !sections.contains(&s) {
                sections.push(s);
            }
        }
        for section in sections {
            let _ = writeln!(md, "## {}\n", title(section));
            let figures: Vec<&Figure> = self
                .figures
                .iter()
                .filter(|f| f.section == section)
                .collect();
            if !figures.is_empty() {
                md.push_str("| figure | median | min–max | unit | ratio | reference |\n");
                md.push_str("|---|---|---|---|---|---|\n");
                for f in figures {
                    let ratio = self
                        .ratio(f)
                        .map(|r| format!("{r:.3}×"))
                        .unwrap_or_else(|| "—".into());
                    let _ = writeln!(
                        md,
                        "| {}{} | {} | {}–{} | {} | {} | {} |",
                        f.name,
                        if f.remark.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", f.remark)
                        },
                        num(f.median()),
                        num(f.min()),
                        num(f.max()),
                        f.unit,
                        ratio,
                        f.reference.as_deref().unwrap_or("—")
                    );
                }
                md.push('\n');
            }
            for (_, text) in self.notes.iter().filter(|n| n.0 == section) {
                let _ = writeln!(md, "- {text}");
            }
            md.push('\n');
        }
        md
    }

    /// The CSV report: one line per figure.
    pub fn csv(&self) -> String {
        let mut csv = String::from("section,figure,unit,median,min,max,ratio,reference,samples\n");
        for f in &self.figures {
            let _ = writeln!(
                csv,
                "{},\"{}\",{},{},{},{},{},\"{}\",{}",
                f.section,
                f.name,
                f.unit,
                f.median(),
                f.min(),
                f.max(),
                self.ratio(f).map(|r| format!("{r:.4}")).unwrap_or_default(),
                f.reference.as_deref().unwrap_or(""),
                f.samples
                    .iter()
                    .map(|s| format!("{s}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        csv
    }
}

fn title(section: &str) -> &str {
    match section {
        "connect" => "Connect from a workload (per operation)",
        "exec" => "Exec (fork + exec of /bin/true, per operation)",
        "events" => "Event path",
        "startup" => "Start-up and memory of `bridle run`",
        "dns" => "DNS answers through the workload's resolver (per query)",
        "criterion" => "Engine, permits and audit (criterion)",
        "daemon" => "The daemon: start, memory and reload",
        other => other,
    }
}

/// A number with as many decimals as it deserves.
fn num(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v.abs() >= 1000.0 {
        // Thousands separators make the large rates readable.
        let s = format!("{v:.0}");
        match s.strip_prefix('-') {
            Some(digits) => format!("-{}", group_digits(digits)),
            None => group_digits(&s),
        }
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `uname -r`.
pub fn uname_r() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Online CPUs.
pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `1234567` as `1,234,567`.
pub fn group_digits(digits: &str) -> String {
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
