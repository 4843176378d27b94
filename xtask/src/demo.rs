//! `cargo xtask demo`: confine a small workload with the shipped default policy and let the
//! kernel refuse one exec and one connect while it permits one of each, live.

use anyhow::{bail, Context, Result};
use std::{io::Read, net::TcpListener, path::Path, process::Command, thread};

/// The workload: a shell script that tries each operation and says what it saw.
const SCRIPT: &str = r#"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
connect() {
  /usr/bin/perl -MIO::Socket::INET -e '
    my $s = IO::Socket::INET->new(PeerAddr => $ARGV[0], Timeout => 3);
    if ($s) { print $s "hello from the workload\n"; print "connected to $ARGV[0]\n"; exit 0 }
    print "connect to $ARGV[0] failed: $!\n"; exit 1' "$1"
}
say "permitted exec: /usr/bin/uname (rule system-programs)"
/usr/bin/uname -sr
say "refused exec: $REFUSED_EXEC (rule no-downloaders-or-remote-shells)"
"$REFUSED_EXEC" --version; echo "the shell saw exit status $?"
say "permitted connect: 127.0.0.1:$DEMO_PORT (rule loopback-services)"
connect "127.0.0.1:$DEMO_PORT"
say "refused connect: 127.0.0.1:80 (no rule covers ports below 1024)"
connect "127.0.0.1:80"
echo
"#;

/// Runs the demo with the bridle binary at `bin`.
pub fn run(bin: &Path) -> Result<()> {
    if !crate::nix_is_root() {
        bail!("the demo loads eBPF programs and needs root: run `sudo -E cargo xtask demo`");
    }
    let refused = ["/usr/bin/curl", "/usr/bin/wget", "/usr/bin/ssh"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("the demo needs one of /usr/bin/curl, wget or ssh to show a refused exec")?;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = String::new();
            let _ = conn.read_to_string(&mut buf);
            println!(
                "(the listener outside the workload received: {:?})",
                buf.trim_end()
            );
        }
    });
    println!("bridle demo: `bridle run --verbose -- sh -c SCRIPT` with the shipped default policy");
    println!("(lines starting with `bridle:` are the kernel's decisions, reported by bridle)");
    let status = Command::new(bin)
        .args(["run", "--verbose", "--", "/bin/sh", "-c", SCRIPT])
        .env("DEMO_PORT", port.to_string())
        .env("REFUSED_EXEC", refused)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("the demo workload failed ({status})");
    }
    Ok(())
}
