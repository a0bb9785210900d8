//! Signals to the processes the tests start, sent with kill(2) itself.
//!
//! Never through the `kill` program: procps-ng 4.0.2 (Debian 12's `/usr/bin/kill`) reads
//! `kill -KILL -PGID` as `kill(-1, SIGKILL)` and kills every process on the machine, the test runner and
//! CI with it.

use std::io;

pub use libc::{SIGINT, SIGKILL, SIGTERM};

/// Send `sig` to process `pid`.
pub fn signal(pid: u32, sig: i32) -> io::Result<()> {
    send(checked(pid)?, sig)
}

/// Send `sig` to every process in the process group `pgid` (a child started with `process_group(0)` leads
/// the group named by its pid).
pub fn signal_group(pgid: u32, sig: i32) -> io::Result<()> {
    send(-checked(pgid)?, sig)
}

/// A pid that names exactly one process or group: 0 and 1 would mean our own group and init, and a value
/// past `i32::MAX` would wrap to a negative target.
fn checked(pid: u32) -> io::Result<i32> {
    match i32::try_from(pid) {
        Ok(p) if p > 1 => Ok(p),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("refusing to signal pid {pid}"))),
    }
}

fn send(target: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(target, sig) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_only_the_group_it_names() {
        use std::os::unix::process::CommandExt;
        let mut bystander = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let mut target = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        signal_group(target.id(), SIGKILL).unwrap();
        assert!(!target.wait().unwrap().success(), "the group's process was killed");
        assert_eq!(bystander.try_wait().unwrap(), None, "a process outside the group is untouched");
        signal(bystander.id(), SIGTERM).unwrap();
        assert!(!bystander.wait().unwrap().success());
        assert!(signal_group(0, SIGKILL).is_err() && signal(1, SIGKILL).is_err(), "0 and 1 are refused");
    }
}
