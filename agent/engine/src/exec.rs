//! Exec patterns: absolute paths where `*` matches inside one path component and `**` any depth.

use std::path::{Path, PathBuf};

/// One entry of a rule's `exec` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExecPattern {
    /// A wildcard-free absolute path: one hash lookup.
    Exact(PathBuf),
    /// A pattern with `*` or `**`.
    Glob {
        /// The pattern as written (already checked to be normalised).
        pattern: String,
        /// The pattern split into components, ready to match.
        matcher: GlobMatcher,
    },
}

/// A pre-split glob pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GlobMatcher {
    prefix: PathBuf,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    /// A component with `*`: the literal pieces between the stars.
    Wild(Vec<String>),
    /// `**`: zero or more components (one or more when it ends the pattern).
    AnyDepth,
}

impl ExecPattern {
    /// Parses and validates one pattern.
    pub fn parse(text: &str) -> Result<ExecPattern, String> {
        if !text.starts_with('/') {
            return Err(format!(
                "exec pattern \"{text}\" is not an absolute path (it must start with '/')"
            ));
        }
        if text.contains('\0') {
            return Err(format!("exec pattern \"{text}\" contains a NUL byte"));
        }
        if text == "/" || text.ends_with('/') {
            return Err(format!(
                "exec pattern \"{text}\" ends with '/': name files, or use \"{}**\" for everything below a directory",
                if text == "/" { "/" } else { text }
            ));
        }
        let components: Vec<&str> = text[1..].split('/').collect();
        let mut segments = Vec::with_capacity(components.len());
        for c in &components {
            if c.is_empty() || *c == "." || *c == ".." {
                return Err(format!(
                    "exec pattern \"{text}\" is not a normalised path (no '//', '.' or '..' components)"
                ));
            }
            if *c == "**" {
                // Consecutive `**` mean the same as one; keep one so the form stays canonical.
                if segments.last() == Some(&Segment::AnyDepth) {
                    return Err(format!("exec pattern \"{text}\" repeats \"**\""));
                }
                segments.push(Segment::AnyDepth);
            } else if c.contains("**") {
                return Err(format!(
                    "exec pattern \"{text}\": \"**\" must be a whole path component"
                ));
            } else if c.contains('*') {
                segments.push(Segment::Wild(c.split('*').map(str::to_string).collect()));
            } else {
                segments.push(Segment::Literal((*c).to_string()));
            }
        }
        let literal_lead = segments
            .iter()
            .take_while(|s| matches!(s, Segment::Literal(_)))
            .count();
        if literal_lead == segments.len() {
            return Ok(ExecPattern::Exact(PathBuf::from(text)));
        }
        let mut prefix = PathBuf::from("/");
        for c in &components[..literal_lead] {
            prefix.push(c);
        }
        let segments = segments.split_off(literal_lead);
        Ok(ExecPattern::Glob {
            pattern: text.to_string(),
            matcher: GlobMatcher { prefix, segments },
        })
    }

    /// Whether `path` (an absolute path, symlinks already resolved) matches this pattern.
    pub fn matches(&self, path: &Path) -> bool {
        match self {
            ExecPattern::Exact(p) => p == path,
            ExecPattern::Glob { matcher, .. } => {
                let Ok(rest) = path.strip_prefix(&matcher.prefix) else {
                    return false;
                };
                let text = rest.to_string_lossy();
                let parts: Vec<&str> = text.split('/').filter(|c| !c.is_empty()).collect();
                match_segments(&matcher.segments, &parts)
            }
        }
    }

    /// The longest wildcard-free leading directory (the whole path for an exact pattern):
    /// where a filesystem walk for this pattern must start.
    pub fn static_prefix(&self) -> &Path {
        match self {
            ExecPattern::Exact(p) => p,
            ExecPattern::Glob { matcher, .. } => &matcher.prefix,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        match self {
            // Exact paths are built from valid UTF-8 text, so this never falls back.
            ExecPattern::Exact(p) => p.to_str().unwrap_or(""),
            ExecPattern::Glob { pattern, .. } => pattern,
        }
    }

    /// Whether the pattern contains `**` (matches at any depth).
    pub fn is_recursive(&self) -> bool {
        match self {
            ExecPattern::Exact(_) => false,
            ExecPattern::Glob { matcher, .. } => matcher.segments.contains(&Segment::AnyDepth),
        }
    }

    /// Whether the pattern has no wildcard.
    pub fn is_exact(&self) -> bool {
        matches!(self, ExecPattern::Exact(_))
    }
}

fn match_segments(segments: &[Segment], parts: &[&str]) -> bool {
    match segments.split_first() {
        None => parts.is_empty(),
        Some((Segment::AnyDepth, rest)) => {
            // A trailing `**` means "everything below", never the directory itself.
            let min = usize::from(rest.is_empty());
            (min..=parts.len()).any(|skip| match_segments(rest, &parts[skip..]))
        }
        Some((seg, rest)) => match parts.split_first() {
            None => false,
            Some((part, tail)) => match_component(seg, part) && match_segments(rest, tail),
        },
    }
}

fn match_component(segment: &Segment, part: &str) -> bool {
    match segment {
        Segment::Literal(l) => l == part,
        Segment::Wild(pieces) => match_star(pieces, part),
        Segment::AnyDepth => true,
    }
}

/// `pieces` are the literals between `*`s: the first must prefix, the last must suffix, and
/// the middle ones must appear in order; leftmost matching is optimal for this shape.
fn match_star(pieces: &[String], text: &str) -> bool {
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        return false;
    };
    if pieces.len() < 2 {
        return first == text;
    }
    let Some(mut rest) = text.strip_prefix(first.as_str()) else {
        return false;
    };
    if rest.len() < last.len() {
        return false;
    }
    let end = rest.len() - last.len();
    if !rest.is_char_boundary(end) || &rest[end..] != last.as_str() {
        return false;
    }
    rest = &rest[..end];
    for mid in &pieces[1..pieces.len() - 1] {
        match rest.find(mid.as_str()) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> bool {
        ExecPattern::parse(p).unwrap().matches(Path::new(path))
    }

    #[test]
    fn star_stays_in_one_component() {
        assert!(m("/usr/bin/*", "/usr/bin/git"));
        assert!(!m("/usr/bin/*", "/usr/bin/x/git"));
        assert!(m(
            "/usr/lib/git-core/git-*",
            "/usr/lib/git-core/git-remote-http"
        ));
        assert!(!m("/usr/lib/git-core/git-*", "/usr/lib/git-core/xgit-a"));
        assert!(m("/opt/*/bin/py*3", "/opt/a/bin/python3"));
        assert!(m("/a/x*y*z", "/a/xyz"));
        assert!(!m("/a/x*y*z", "/a/xzy"));
        assert!(!m("/a/ab*ba", "/a/aba"));
    }

    #[test]
    fn double_star_any_depth() {
        assert!(m("/opt/tools/**", "/opt/tools/a"));
        assert!(m("/opt/tools/**", "/opt/tools/a/b/c"));
        assert!(!m("/opt/tools/**", "/opt/tools"));
        assert!(!m("/opt/tools/**", "/opt/toolsx/a"));
        assert!(m("/opt/**/bin/x", "/opt/bin/x"));
        assert!(m("/opt/**/bin/x", "/opt/a/b/bin/x"));
        assert!(m("/**", "/anything/at/all"));
    }

    #[test]
    fn exact_and_prefix() {
        let p = ExecPattern::parse("/usr/bin/git").unwrap();
        assert!(p.is_exact());
        assert_eq!(p.static_prefix(), Path::new("/usr/bin/git"));
        let g = ExecPattern::parse("/usr/lib/*/bin/**").unwrap();
        assert_eq!(g.static_prefix(), Path::new("/usr/lib"));
        assert!(g.is_recursive());
        assert_eq!(g.as_str(), "/usr/lib/*/bin/**");
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in [
            "usr/bin/x",
            "",
            "/",
            "/usr/bin/",
            "/usr//bin",
            "/usr/./x",
            "/a/../b",
            "/a/b**",
            "/a/**/**",
        ] {
            assert!(ExecPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
