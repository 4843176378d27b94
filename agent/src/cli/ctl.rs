//! `bridle status`, `bridle reload`, `bridle release` and `bridle unload`: talking to (or
//! undoing) the daemon.

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
    /// Lift the workload's quarantine (thaw it, or put its policy back in the kernel).
    #[arg(long)]
    quarantine: bool,
    /// The workload's cgroup: its path, or its path below the cgroup root.
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
    }
    Ok(ExitCode::SUCCESS)
}

/// `bridle release --quarantine CGROUP`.
pub fn release(args: ReleaseArgs) -> Result<ExitCode> {
    let body = answered(control::ask(
        &args.socket.socket,
        &Request::Release {
            cgroup: args.cgroup,
            quarantine: args.quarantine,
        },
    )?)?;
    println!(
        "lifted the {} quarantine of {}",
        body["lifted"].as_str().unwrap_or("?"),
        body["cgroup"].as_str().unwrap_or("?")
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
