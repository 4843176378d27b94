//! A channel whose receiving end can be polled along with other descriptors.
//!
//! The daemon's loop waits on the kernel's ring buffer, the exec ask's decisions and the
//! control requests at once: each sender writes a byte into a pipe the loop polls, so an item
//! is taken as soon as it is sent rather than at the next timeout.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{mpsc, Arc},
};

/// The sending end: a channel, and the pipe that wakes the receiving loop.
pub struct Sender<T> {
    tx: mpsc::Sender<T>,
    wake: Arc<OwnedFd>,
}

// Derived `Clone` would require `T: Clone`.
impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            wake: Arc::clone(&self.wake),
        }
    }
}

/// The receiving end, for a loop that polls [`Receiver::fd`].
pub struct Receiver<T> {
    rx: mpsc::Receiver<T>,
    wake: OwnedFd,
}

/// A channel whose receiving loop can wait on [`Receiver::fd`].
pub fn channel<T>() -> io::Result<(Sender<T>, Receiver<T>)> {
    let mut ends = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into `ends`.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let (tx, rx) = mpsc::channel();
    Ok((
        Sender {
            tx,
            wake: Arc::new(write),
        },
        Receiver { rx, wake: read },
    ))
}

impl<T> Sender<T> {
    /// Hands `item` over and wakes the receiving loop; gives it back if the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), T> {
        self.tx.send(item).map_err(|e| e.0)?;
        // SAFETY: writes one byte from a live buffer; a full pipe already wakes the reader.
        unsafe { libc::write(self.wake.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        Ok(())
    }
}

impl<T> Receiver<T> {
    /// The fd to poll: readable when items wait.
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// The next waiting item, if any (draining the wake-up pipe as it goes).
    pub fn try_recv(&self) -> Option<T> {
        let mut sink = [0u8; 64];
        // SAFETY: reads into a live buffer of its length from our non-blocking pipe.
        while unsafe { libc::read(self.wake.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) } > 0
        {
        }
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_item_makes_the_fd_readable_until_it_is_taken() {
        let (tx, rx) = channel::<u32>().expect("channel");
        let readable = |fd: RawFd| {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no wait.
            unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
        };
        assert!(!readable(rx.fd()));
        tx.clone().send(7).expect("send");
        assert!(readable(rx.fd()));
        assert_eq!(rx.try_recv(), Some(7));
        assert!(!readable(rx.fd()));
        assert_eq!(rx.try_recv(), None);
        drop(rx);
        assert_eq!(tx.send(8), Err(8));
    }
}
