//! Peer liveness without the router: each side of a connection holds an
//! open-file-description (OFD) lock on one byte of the connection file. The
//! kernel drops the lock when the holder dies, however it dies, so a side can
//! tell that its peer is gone even while the router is down or restarting.
//!
//! Descriptors passed with SCM_RIGHTS share one open file description, and
//! OFD locks of one description never conflict with each other, so each side
//! first re-opens the file through `/proc/self/fd` to get its own description.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The lock a side holds for as long as it is alive.
pub struct Liveness {
    file: File,
}

fn flock(side: usize, kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = side as libc::off_t;
    fl.l_len = 1;
    fl
}

impl Liveness {
    /// Takes side `side`'s lock on the file behind `fd`.
    pub fn hold(fd: BorrowedFd<'_>, side: usize) -> std::io::Result<Liveness> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let mut fl = flock(side, libc::F_WRLCK as libc::c_short);
        // SAFETY: valid descriptor and a valid flock struct on our stack.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Liveness { file })
    }

    /// Is side `side`'s lock held by someone (other than this description)?
    pub fn is_held(&self, side: usize) -> bool {
        let mut fl = flock(side, libc::F_WRLCK as libc::c_short);
        // SAFETY: as above; F_OFD_GETLK only writes into `fl`.
        let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
        rc != 0 || fl.l_type != libc::F_UNLCK as libc::c_short
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::SharedMem;

    #[test]
    fn a_dropped_holder_is_seen_as_dead() {
        let m = SharedMem::create("live", 4096).unwrap();
        let a = Liveness::hold(m.fd(), 0).unwrap();
        let b = Liveness::hold(m.fd(), 1).unwrap();
        assert!(a.is_held(1) && b.is_held(0));
        assert!(Liveness::hold(m.fd(), 0).is_err(), "a side is held once");
        drop(b);
        assert!(!a.is_held(1));
    }

    #[test]
    fn a_killed_process_releases_its_lock() {
        let m = SharedMem::create("live", 4096).unwrap();
        let me = Liveness::hold(m.fd(), 0).unwrap();
        // SAFETY: the child only takes a lock and sleeps; no allocator use
        // after fork beyond what Liveness::hold does in a fresh process image.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let _l = Liveness::hold(m.fd(), 1);
            unsafe { libc::pause() };
            unsafe { libc::_exit(0) };
        }
        let t = std::time::Instant::now();
        while !me.is_held(1) {
            assert!(t.elapsed().as_secs() < 5);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert!(!me.is_held(1), "the kernel dropped the dead child's lock");
    }
}
