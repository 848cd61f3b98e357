//! guest_image::interrupt, in a test binary of its own: its state is the whole process's.

use std::process::Command;
use std::time::{Duration, Instant};

use guest_image::interrupt::{check, request, status};

/// A child running when the signal comes is stopped with its whole process group, the build's
/// next check fails, and no child starts after it.
#[test]
fn a_request_stops_the_childs_group_and_what_would_come_next() {
    assert!(check().is_ok());
    let dir = std::env::temp_dir().join(format!("carbon-interrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("grandchild");
    // The child starts a grandchild, writes its pid (whole, by a rename) and waits for it, as
    // mmdebstrap's first process waits for its workers.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("sleep 600 & echo $! > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"; wait")
        .arg("sh")
        .arg(&pid_file);
    let waiter = std::thread::spawn(move || status(&mut cmd));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "the child never started its own");
        std::thread::yield_now();
    }
    let grandchild: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    request(15);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            let _ = Command::new("kill").arg(grandchild.to_string()).status();
            panic!("the child still runs 30 s after the request");
        }
        std::thread::yield_now();
    }
    let st = waiter.join().unwrap().unwrap();
    assert!(!st.success(), "the child was not stopped: {st}");
    // A lone SIGTERM to the child would have left the grandchild running.
    let gone = || {
        std::fs::read_to_string(format!("/proc/{grandchild}/stat")).map_or(true, |s| {
            s.rsplit(')').next().unwrap().trim_start().starts_with('Z')
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gone() {
        assert!(Instant::now() < deadline, "{grandchild} still runs");
        std::thread::yield_now();
    }
    assert_eq!(check().unwrap_err().0, 15);
    let e = status(&mut Command::new("true")).unwrap_err();
    assert!(e.to_string().contains("SIGTERM"), "{e}");
}
