//! The data directory's permissions (found in review), with the binary
//! as a process so the umask is the process's own.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::BIN;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// How a start went: it serves (and was stopped), or it exited with this
/// message.
enum Started {
    Serving { log: String },
    Refused { status: Option<i32>, log: String },
}

/// Runs `keycard serve` on `data` under `umask`, until it reports its
/// address (then stops it) or exits.
fn serve(data: &Path, umask: &str) -> Started {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "info",
            "--data",
        ])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let serving = line.contains("addr=");
                log.push_str(&line);
                log.push('\n');
                if serving {
                    // Let it write what a start writes, then stop it.
                    std::thread::sleep(Duration::from_millis(300));
                    let _ = child.kill();
                    let _ = child.wait();
                    return Started::Serving { log };
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = child.try_wait() {
                    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                        log.push_str(&line);
                        log.push('\n');
                    }
                    return Started::Refused {
                        status: status.code(),
                        log,
                    };
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().ok().and_then(|s| s.code());
                return Started::Refused { status, log };
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("neither served nor exited: {log}");
}

/// Found in review: the data directory was created
/// 0755 and the store and the audit log 0644 (the umask's choice), so any
/// local user could read every verifier and the login history. They are
/// created 0700 / 0600 whatever the umask.
#[test]
fn fixed_data_files_are_created_private_whatever_the_umask() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    match serve(&data, "000") {
        Started::Serving { .. } => {}
        Started::Refused { status, log } => panic!("did not start ({status:?}): {log}"),
    }
    let octal = |p: &Path| format!("{:o}", mode(p));
    assert_eq!(octal(&data), "700", "the data directory");
    assert_eq!(octal(&data.join("keycard.redb")), "600", "the store");
    assert_eq!(octal(&data.join("audit.log")), "600", "the audit log");
    // And a second start over them is content.
    assert!(matches!(serve(&data, "000"), Started::Serving { .. }));
}

/// Found in review: files left open to other users by
/// an older version or an operator were used as they were. A store or an
/// audit log open to others, or a data directory others may write to, is
/// refused with the chmod to run; a data directory others may only list
/// is warned about.
#[test]
fn fixed_loose_permissions_are_refused_with_the_chmod_to_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    assert!(matches!(serve(&data, "077"), Started::Serving { .. }));
    for (file, loose, want) in [
        (data.join("keycard.redb"), 0o644, "chmod 600"),
        (data.join("audit.log"), 0o640, "chmod 600"),
        (data.clone(), 0o777, "chmod 700"),
        (data.clone(), 0o770, "chmod 700"),
    ] {
        let tight = mode(&file);
        chmod(&file, loose);
        match serve(&data, "077") {
            Started::Serving { log } => panic!("served with {} {loose:o}: {log}", file.display()),
            Started::Refused { status, log } => {
                assert_ne!(status, Some(0), "{log}");
                let expect = format!("{want} {}", file.display());
                assert!(log.contains(&expect), "no `{expect}` in: {log}");
            }
        }
        chmod(&file, tight);
    }
    chmod(&data, 0o755);
    match serve(&data, "077") {
        Started::Serving { log } => assert!(
            log.contains(&format!("chmod 700 {}", data.display())),
            "no warning: {log}"
        ),
        Started::Refused { log, .. } => panic!("a listable data directory was refused: {log}"),
    }
}
