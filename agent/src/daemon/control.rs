//! The control socket: JSON lines over a unix socket that only root may use.
//!
//! The socket file is created 0600 in a 0700 directory, and every connection's peer
//! credentials are checked as well, so a non-root client is refused by the kernel at connect
//! time and, should the file modes ever be loosened, by the daemon before it reads a byte.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/bridle/bridle.sock";

/// How long the daemon's main loop may take to answer one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Tiers, workloads, policies, counters, the last reload.
    Status,
    /// Re-read the configuration and every policy; all or nothing.
    Reload,
    /// Follow the daemon's decisions: after the reply, one JSON object per line and decision
    /// (of one workload, if given) until the client hangs up.
    Events {
        /// Only this workload (its cgroup path).
        workload: Option<String>,
    },
    /// End a workload's confinement, or (with `quarantine`) only lift its quarantine.
    Release {
        /// The workload's cgroup: its path, or its path below the cgroup root.
        cgroup: String,
        /// Lift its quarantine instead.
        quarantine: bool,
    },
    /// Confine a cgroup with a policy until it is released (kept across daemon restarts).
    Confine {
        /// The cgroup: its path, or its path below the cgroup root.
        cgroup: String,
        /// The policy: an absolute file path, or a name in the configured policy directory.
        policy: String,
        /// `enforce` or `observe`, overriding the policy's mode.
        mode: Option<String>,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request did what it asked.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer's content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

impl Reply {
    /// A successful answer.
    pub fn ok(body: serde_json::Value) -> Reply {
        Reply {
            ok: true,
            error: None,
            body: Some(body),
        }
    }

    /// A refusal or failure.
    pub fn error(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(message.into()),
            body: None,
        }
    }
}

/// A request with the channel its answer goes back on.
pub type Asked = (Request, mpsc::Sender<Reply>);

/// How many decisions wait for one slow follower before newer ones are dropped (and counted).
const FOLLOW_QUEUE: usize = 4096;

struct Follower {
    workload: Option<String>,
    tx: mpsc::SyncSender<String>,
    /// Decisions dropped since the last one delivered.
    dropped: u64,
}

/// The clients following the daemon's decisions. The daemon publishes to them without ever
/// waiting: a follower too slow to keep up loses decisions, and is told how many.
#[derive(Clone, Default)]
pub struct Followers(Arc<Mutex<Vec<Follower>>>);

impl Followers {
    /// Whether anyone follows (so the daemon can skip formatting).
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Hands `line`, a decision of `workload`, to every follower that wants it; forgets those
    /// that hung up.
    pub fn publish(&self, workload: &str, line: &str) {
        self.lock().retain_mut(|f| {
            if f.workload.as_deref().is_some_and(|w| w != workload) {
                return true;
            }
            if f.dropped > 0 {
                let notice = format!("{{\"lost\":{}}}", f.dropped);
                match f.tx.try_send(notice) {
                    Ok(()) => f.dropped = 0,
                    Err(mpsc::TrySendError::Full(_)) => {
                        f.dropped += 1;
                        return true;
                    }
                    Err(mpsc::TrySendError::Disconnected(_)) => return false,
                }
            }
            match f.tx.try_send(line.to_owned()) {
                Ok(()) => true,
                Err(mpsc::TrySendError::Full(_)) => {
                    f.dropped += 1;
                    true
                }
                Err(mpsc::TrySendError::Disconnected(_)) => false,
            }
        });
    }

    fn add(&self, workload: Option<String>) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::sync_channel(FOLLOW_QUEUE);
        self.lock().push(Follower {
            workload,
            tx,
            dropped: 0,
        });
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Follower>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The listening side; dropping it stops the listener and removes the socket file.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `path` (root only), hands each request to `to_daemon` and adds event followers
    /// to `followers`.
    pub fn start(
        path: &Path,
        to_daemon: crate::channel::Sender<Asked>,
        followers: Followers,
    ) -> Result<Server> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", dir.display()))?;
        }
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another bridle daemon is answering on {}; stop it first",
                path.display()
            );
        }
        let _ = fs::remove_file(path);
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("making the control socket non-blocking")?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("bridle-control".into())
                .spawn(move || serve(listener, to_daemon, followers, stop))
                .context("starting the control socket thread")?
        };
        Ok(Server {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

fn serve(
    listener: UnixListener,
    to_daemon: crate::channel::Sender<Asked>,
    followers: Followers,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = handle(stream, &to_daemon, &followers);
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn handle(
    mut stream: UnixStream,
    to_daemon: &crate::channel::Sender<Asked>,
    followers: &Followers,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let creds = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .context("reading the peer's credentials")?;
    let reply = if creds.uid() != 0 {
        Reply::error(format!(
            "permission denied: the control socket serves root only (peer uid {})",
            creds.uid()
        ))
    } else {
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        match serde_json::from_str::<Request>(&line) {
            Err(err) => Reply::error(format!("bad request: {err}")),
            Ok(Request::Events { workload }) => return follow(stream, followers, workload),
            Ok(request) => {
                let (tx, rx) = mpsc::channel();
                if to_daemon.send((request, tx)).is_err() {
                    Reply::error("the daemon is stopping")
                } else {
                    rx.recv_timeout(ANSWER_TIMEOUT)
                        .unwrap_or_else(|_| Reply::error("the daemon did not answer in time"))
                }
            }
        }
    };
    let mut text = serde_json::to_string(&reply)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    Ok(())
}

/// Answers an events request, then streams decisions to the client on a thread of its own,
/// until the client hangs up.
fn follow(mut stream: UnixStream, followers: &Followers, workload: Option<String>) -> Result<()> {
    // Registered before the answer: a client that got it misses no later decision.
    let rx = followers.add(workload);
    let mut text = serde_json::to_string(&Reply::ok(serde_json::json!({ "following": true })))?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    std::thread::Builder::new()
        .name("bridle-follow".into())
        .spawn(move || {
            for mut line in rx {
                line.push('\n');
                if stream.write_all(line.as_bytes()).is_err() {
                    break; // the client hung up; the next publish forgets it
                }
            }
        })
        .context("starting a follower thread")?;
    Ok(())
}

/// Connects to the daemon at `path`.
fn connect(path: &Path) -> Result<UnixStream> {
    UnixStream::connect(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {}: the control socket serves root only",
            path.display()
        ),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "no bridle daemon is running (nothing answers on {})",
            path.display()
        ),
        _ => anyhow::anyhow!("connecting to {}: {err}", path.display()),
    })
}

/// Asks the daemon at `path` for its decisions (of `workload`, if given) and calls `each`
/// with every line it streams, until `each` returns false or the daemon goes away.
pub fn follow_events(
    path: &Path,
    workload: Option<String>,
    each: impl FnMut(&str) -> bool,
) -> Result<()> {
    Following::start(path, workload)?.each(each)
}

/// A stream of the daemon's decisions, from the moment [`Following::start`] returned.
pub struct Following {
    lines: std::io::Lines<BufReader<UnixStream>>,
}

impl Following {
    /// Asks the daemon for its decisions (of one workload, if given); returns once the daemon
    /// has registered the request, so no decision made afterwards is missed.
    pub fn start(path: &Path, workload: Option<String>) -> Result<Following> {
        let mut stream = connect(path)?;
        let mut text = serde_json::to_string(&Request::Events { workload })?;
        text.push('\n');
        stream.write_all(text.as_bytes())?;
        let mut lines = BufReader::new(stream).lines();
        let first = lines
            .next()
            .context("the daemon closed the connection")?
            .context("reading the daemon's answer")?;
        let reply: Reply = serde_json::from_str(&first)
            .with_context(|| format!("the daemon answered {first:?}"))?;
        if !reply.ok {
            bail!(
                "{}",
                reply.error.unwrap_or_else(|| "the daemon refused".into())
            );
        }
        Ok(Following { lines })
    }

    /// Calls `each` with every decision (one JSON object per line) until it returns false or
    /// the daemon hangs up.
    pub fn each(self, mut each: impl FnMut(&str) -> bool) -> Result<()> {
        for line in self.lines {
            let line = line.context("reading from the daemon")?;
            if !each(&line) {
                break;
            }
        }
        Ok(())
    }
}

/// Sends one request to the daemon at `path` and waits for its answer.
pub fn ask(path: &Path, request: &Request) -> Result<Reply> {
    let mut stream = connect(path)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT + Duration::from_secs(5)))?;
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the daemon's answer")?;
    serde_json::from_str(&line).with_context(|| format!("the daemon answered {line:?}"))
}
