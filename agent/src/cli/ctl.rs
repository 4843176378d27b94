//! `bridle status`, `bridle reload`, `bridle confine`, `bridle release` and `bridle unload`:
//! talking to (or undoing) the daemon.

use crate::{
    daemon::control::{self, Reply, Request},
    kernel::pins,
};
use anyhow::{bail, Result};
use clap::Args;
use std::{path::PathBuf, process::ExitCode};

/// Where the daemon's control socket is.
#[derive(Debug, Args)]
pub struct SocketArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = control::DEFAULT_SOCKET, env = "BRIDLE_SOCKET")]
    pub socket: PathBuf,
}

/// Arguments of `bridle status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `bridle release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Only lift the workload's quarantine (thaw it, or put its policy back in the kernel).
    #[arg(long)]
    quarantine: bool,
    /// The workload's cgroup: its path, or its path below the cgroup root.
    cgroup: String,
}

/// Arguments of `bridle confine`.
#[derive(Debug, Args)]
pub struct ConfineArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// The policy: a file, or the name of one in the daemon's policy directory.
    #[arg(long)]
    policy: String,
    /// Refuse nothing; report what the policy would refuse.
    #[arg(long, conflicts_with = "enforce")]
    observe: bool,
    /// Enforce even if the policy says observe.
    #[arg(long)]
    enforce: bool,
    /// The cgroup: its path, or its path below the cgroup root.
    cgroup: String,
}

/// Arguments of `bridle unload`.
#[derive(Debug, Args)]
pub struct UnloadArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Where the daemon pinned its programs, maps and links.
    #[arg(long, default_value = pins::DEFAULT_DIR)]
    pin_dir: PathBuf,
}

fn answered(reply: Reply) -> Result<serde_json::Value> {
    if reply.ok {
        Ok(reply.body.unwrap_or(serde_json::Value::Null))
    } else {
        bail!(
            "{}",
            reply
                .error
                .unwrap_or_else(|| "the daemon refused".to_owned())
        )
    }
}

/// `bridle status`.
pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let body = answered(control::ask(&args.socket.socket, &Request::Status)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = |v: &serde_json::Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    println!(
        "pins:        {} (adopted: {})",
        s(&body["pin_dir"]),
        body["adopted_pins"]
    );
    for (name, tier) in body["tiers"].as_object().into_iter().flatten() {
        println!("tier {name:<11} {}", s(tier));
    }
    let events = &body["events"];
    println!(
        "events:      {} judged, {} refused, {} lost",
        events["judged"], events["refused"], events["lost"]
    );
    match body["last_reload"].as_object() {
        None => println!("last reload: never"),
        Some(r) => println!(
            "last reload: {} at {}{}",
            r.get("outcome").map(s).unwrap_or_default(),
            r.get("at").map(s).unwrap_or_default(),
            r.get("error")
                .map(|e| format!(": {}", s(e)))
                .unwrap_or_default()
        ),
    }
    let workloads = body["workloads"].as_array().cloned().unwrap_or_default();
    println!("workloads:   {}", workloads.len());
    for w in workloads {
        println!(
            "  {}  policy {} ({}, sha256 {})  {} exec + {} address entries, {} permits{}",
            s(&w["cgroup"]),
            s(&w["policy"]),
            s(&w["mode"]),
            s(&w["digest"]),
            w["exec_entries"],
            w["address_entries"],
            w["permits"],
            w["quarantined"]
                .as_str()
                .map(|a| format!("  QUARANTINED ({a})"))
                .unwrap_or_default()
        );
        let r = &w["resolver"];
        if let Some(err) = r["error"].as_str() {
            println!("    resolver: did not start, host rules permit nothing: {err}");
        } else if r.is_object() {
            println!(
                "    resolver {} -> upstream {}  {} permitted, {} refused, {} observed, {} failed, {} addresses live{}",
                s(&r["address"]),
                s(&r["upstream"]),
                r["permitted"],
                r["refused"],
                r["observed"],
                r["failed"],
                r["addresses"],
                if r["refusing_all"] == true {
                    "  (refusing every name: quarantined)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bridle release [--quarantine] CGROUP`.
pub fn release(args: ReleaseArgs) -> Result<ExitCode> {
    let quarantine = args.quarantine;
    let body = answered(control::ask(
        &args.socket.socket,
        &Request::Release {
            cgroup: args.cgroup,
            quarantine,
        },
    )?)?;
    let cgroup = body["cgroup"].as_str().unwrap_or("?");
    if quarantine {
        println!(
            "lifted the {} quarantine of {cgroup}",
            body["lifted"].as_str().unwrap_or("?"),
        );
    } else if body["configured"].as_bool() == Some(true) {
        println!(
            "released {cgroup}: its [[confine]] entry no longer applies to it until it is confined again"
        );
    } else {
        println!("released {cgroup}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `bridle confine --policy P CGROUP`.
pub fn confine(args: ConfineArgs) -> Result<ExitCode> {
    // A file given here is named to the daemon by its absolute path; a bare name is looked up
    // in the daemon's policy directory.
    let policy = if args.policy.contains('/') || args.policy.ends_with(".toml") {
        std::fs::canonicalize(&args.policy)
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.policy))?
            .display()
            .to_string()
    } else {
        args.policy
    };
    let mode = if args.observe {
        Some("observe".to_owned())
    } else if args.enforce {
        Some("enforce".to_owned())
    } else {
        None
    };
    let body = answered(control::ask(
        &args.socket.socket,
        &Request::Confine {
            cgroup: args.cgroup,
            policy,
            mode,
        },
    )?)?;
    println!(
        "confined {} with {} ({}, sha256 {})",
        body["cgroup"].as_str().unwrap_or("?"),
        body["policy"].as_str().unwrap_or("?"),
        body["mode"].as_str().unwrap_or("?"),
        body["digest"].as_str().unwrap_or("?"),
    );
    Ok(ExitCode::SUCCESS)
}

/// `bridle reload`.
pub fn reload(args: SocketArgs) -> Result<ExitCode> {
    answered(control::ask(&args.socket, &Request::Reload)?)?;
    println!("reloaded");
    Ok(ExitCode::SUCCESS)
}

/// `bridle unload`: removes every pinned program, map and link on purpose.
pub fn unload(args: UnloadArgs) -> Result<ExitCode> {
    if control::ask(&args.socket.socket, &Request::Status).is_ok() {
        bail!(
            "a bridle daemon is running (it answers on {}): stop it first, or it would confine again",
            args.socket.socket.display()
        );
    }
    pins::unload(&args.pin_dir)?;
    println!(
        "unloaded: nothing under {} is enforced any more",
        args.pin_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
