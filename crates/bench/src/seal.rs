//! The seal suite: the same keycard binary started twice side by side,
//! once with secrets sealed at rest (`--seal-key-file`) and once without,
//! driven with the same workloads: get_value (data is never sealed, so
//! reads should not change), SCRAM logins on new connections (the user
//! record is opened through the seal on each), and REST logins (each
//! writes its session record, sealed on one side).

use std::time::Instant;

use crate::tls::{require_scram, scram_logins, PW};
use crate::{free_port, print_table_with, setup, start_keycard_with, throughput, Args, Op, Row};

/// A seal key file (32 raw random bytes, mode 0600) in `dir`.
fn key_file(dir: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("seal.key");
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let mut f = open.open(&path)?;
    let key: [u8; 32] = rand::random();
    f.write_all(&key)?;
    Ok(path.to_string_lossy().into_owned())
}

/// REST logins per second, one client, each a new session (`POST
/// /session/new`, `PUT`), then a logout so the sessions do not pile up.
async fn rest_logins(http: &str, secs: f64) -> anyhow::Result<f64> {
    use keycard_client::rest::{Login, RestClient};
    let rest = RestClient::new(http);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let s = rest
            .login(Login::scram("bench", keycard_auth::Password::new(PW))?)
            .await?;
        rest.logout(&s).await?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub(crate) async fn seal_suite(args: &Args) -> anyhow::Result<()> {
    if args.keycard_addr.is_some() {
        anyhow::bail!("the seal suite starts its own two servers: leave out --keycard-addr");
    }
    let dir = std::env::temp_dir().join(format!("keycard-bench-seal-{}", std::process::id()));
    let key = key_file(&dir)?;
    // The key file outlives the servers' start: the restore needs it.
    let key_copy = std::env::temp_dir()
        .join(format!("keycard-bench-seal-{}.key", std::process::id()))
        .to_string_lossy()
        .into_owned();
    std::fs::copy(&key, &key_copy)?;
    let sealed_http = format!("127.0.0.1:{}", free_port()?);
    let plain_http = format!("127.0.0.1:{}", free_port()?);
    let sealed = start_keycard_with(
        args,
        &["--http", &sealed_http, "--seal-key-file", &key],
        None,
    )
    .await?;
    let plain = start_keycard_with(args, &["--http", &plain_http], None).await?;
    let _ = std::fs::remove_dir_all(&dir);
    let peers = [&sealed, &plain];
    for p in peers {
        setup(p.addr).await?;
    }
    println!("### Secrets sealed at rest against not sealed (the same keycard binary, same run)\n");
    let mut rows = Vec::new();
    for (name, clients, depth) in [
        ("get_value, 1 client, 1 in flight (ops/s)", 1, 1),
        ("get_value, 16 clients, 16 pipelined each (ops/s)", 16, 16),
    ] {
        let mut results = Vec::new();
        for p in peers {
            results.push(throughput(p.addr, Op::Get, clients, depth, args.seconds).await?);
        }
        eprintln!("{name}: sealed {:.0}, plain {:.0}", results[0], results[1]);
        rows.push(Row {
            name: name.into(),
            results,
        });
    }
    // On both, the bench user holds super_root (it dumps the sealed one).
    for p in peers {
        require_scram(p.addr, None, &["super_root"]).await?;
    }
    let mut results = Vec::new();
    for p in peers {
        results.push(scram_logins(p.addr, None, args.seconds).await?);
    }
    eprintln!(
        "msgpack logins: sealed {:.0}, plain {:.0}",
        results[0], results[1]
    );
    rows.push(Row {
        name: "SCRAM logins/s, 1 client, a new connection each".into(),
        results,
    });
    let mut results = Vec::new();
    for http in [&sealed_http, &plain_http] {
        results.push(rest_logins(http, args.seconds).await?);
    }
    eprintln!(
        "REST logins: sealed {:.0}, plain {:.0}",
        results[0], results[1]
    );
    rows.push(Row {
        name: "REST SCRAM logins/s, 1 client (session kept, then logout)".into(),
        results,
    });
    print_table_with(
        &["keycard sealed", "keycard not sealed"],
        "sealed / not",
        rows,
    );
    let measured = dump_and_restore(args, &sealed, &key_copy).await;
    let _ = std::fs::remove_file(&key_copy);
    measured
}

/// `args.dump_entries` data nodes written into the sealed server, then
/// `keycard dump` of the whole tree and `keycard restore` of the file into
/// an empty directory, each timed as a whole command: nodes per second.
async fn dump_and_restore(args: &Args, sealed: &crate::Peer, key: &str) -> anyhow::Result<()> {
    let n = args.dump_entries;
    let writers = 16u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let addr = sealed.addr;
        tasks.push(tokio::spawn(async move {
            let c = keycard_client::Client::connect(addr).await?;
            // Logins are required by now: the bench user writes.
            c.login(&keycard_auth::ScramClient::new(
                "bench",
                keycard_auth::Password::new(PW),
            ))
            .await?;
            let mut i = w;
            while i < n {
                let p = keycard_proto::Path::new(vec!["fill".into(), format!("n{i:08}").into()]);
                c.set(&p, keycard_proto::Value::from(i)).await?;
                i += writers;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let bin = match &args.keycard {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("keycard"),
    };
    let dir = std::env::temp_dir().join(format!("keycard-bench-dump-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("tree.dump");
    let run = |args: &[&str]| -> anyhow::Result<(f64, String)> {
        let start = Instant::now();
        let out = std::process::Command::new(&bin)
            .args(args)
            .env("KEYCARD_PASSWORD", PW)
            .output()?;
        let secs = start.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        anyhow::ensure!(out.status.success(), "{args:?}: {err}");
        Ok((secs, err))
    };
    let f = file.to_string_lossy().into_owned();
    let addr = sealed.addr.to_string();
    let (dump_s, said) = run(&["dump", &f, "-s", &addr, "--user", "bench"])?;
    let nodes: f64 = said
        .split("dumped ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0.0);
    let bytes = std::fs::metadata(&file)?.len();
    let target = dir.join("restored").to_string_lossy().into_owned();
    let (restore_s, _) = run(&["restore", &f, "--data", &target, "--seal-key-file", key])?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\n### Dump and restore (sealed store, {nodes} nodes, {:.1} MiB file)\n",
        bytes as f64 / f64::from(1u32 << 20)
    );
    println!("| command | seconds | nodes/s |");
    println!("|---|---:|---:|");
    println!(
        "| keycard dump (online, over msgpack) | {dump_s:.2} | {:.0} |",
        nodes / dump_s
    );
    println!(
        "| keycard restore (offline) | {restore_s:.2} | {:.0} |",
        nodes / restore_s
    );
    Ok(())
}
