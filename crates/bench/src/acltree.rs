//! The ACL tree-walk suite: get_tree over the same N entries on one keycard
//! server, by a user bound to no ACL (DistKV's full access) and by a user
//! bound to an ACL that lets it read the whole subtree, walks alternating,
//! in the same run. Reports each user's walk time, entries/s, the server
//! process's CPU time per walk and the with-ACL / without-ACL ratios.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{bail, Context};
use keycard_auth::ClientRegistry;
use keycard_client::Client;
use keycard_proto::{encode_into, Elem, Msg, Path, Value};
use tokio::io::AsyncWriteExt;

use crate::{load_tree, start_keycard, Args, Conn};

/// The user bound to no ACL.
const OPEN_USER: &str = "benchopen";
/// The user bound to [`ACL_NAME`].
const ACL_USER: &str = "benchacl";
/// The ACL the second user is bound to.
const ACL_NAME: &str = "benchread";

fn elems(parts: &[&str]) -> Vec<Elem> {
    parts.iter().map(|s| Elem::from(*s)).collect()
}

/// The bound user's ACL: what lets it walk `tree` (pass into it, list it,
/// read and pass everything below), two rules under `tree` that match none
/// of the loaded nodes but sit on the matcher's way (a literal and a `+`
/// child next to the `#`), and 100 rules for other parts of the tree.
fn acl_entries() -> Vec<(Vec<Elem>, &'static str)> {
    let mut v = vec![
        (elems(&["tree"]), "xe"),
        (elems(&["tree", "#"]), "rxe"),
        (elems(&["tree", "private", "#"]), ""),
        (elems(&["tree", "+", "secret"]), ""),
    ];
    for i in 0..50 {
        v.push((elems(&["home", &format!("u{i}"), "#"]), "rwcdxen"));
        v.push((elems(&[&format!("app{i}"), "+", "cfg"]), "r"));
    }
    v
}

async fn set_internal(c: &Client, path: Vec<Elem>, value: Value) -> anyhow::Result<()> {
    c.request(
        Msg::new()
            .with("action", "set_internal")
            .with_path("path", &Path::new(path))
            .with("value", value),
    )
    .await
    .context("set_internal")?;
    Ok(())
}

/// On the open server: creates the two `_test` users, the ACL and the
/// binding, then makes `_test` current (auth on). Returns the ACL's size.
async fn setup_auth(addr: SocketAddr) -> anyhow::Result<usize> {
    let a = Client::connect(addr).await?;
    for name in [OPEN_USER, ACL_USER] {
        let m = ClientRegistry::make(keycard_auth::TEST, Some(name))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        a.set_user(m.as_ref())
            .await
            .with_context(|| format!("create user {name}"))?;
    }
    let entries = acl_entries();
    let n = entries.len();
    for (pattern, modes) in entries {
        let mut p = elems(&["acl", ACL_NAME]);
        p.extend(pattern);
        set_internal(&a, p, modes.into()).await?;
    }
    set_internal(
        &a,
        elems(&["auth", keycard_auth::TEST, "user", ACL_USER, "acl"]),
        Msg::new().with("key", ACL_NAME).into_value(),
    )
    .await?;
    a.request(
        Msg::new()
            .with("action", "set_auth_typ")
            .with("typ", keycard_auth::TEST),
    )
    .await
    .context("set_auth_typ _test")?;
    Ok(n)
}

/// A raw connection logged in as `_test` user `user`.
async fn login(addr: SocketAddr, user: &str) -> anyhow::Result<Conn> {
    let mut c = Conn::connect(addr).await?;
    let m = Msg::seq(1)
        .with("action", "auth")
        .with("typ", keycard_auth::TEST)
        .with("ident", user)
        .with("data", Value::Map(Vec::new()));
    let mut out = Vec::new();
    encode_into(&m.into_value(), &mut out);
    c.stream.write_all(&out).await?;
    loop {
        let v = c.recv().await?;
        if let Some(e) = v.get("error") {
            bail!("login as {user} refused: {e:?}");
        }
        if v.get("seq").and_then(Value::as_i64) == Some(1)
            && (v.get("wseq").is_none() || v.get("state").and_then(Value::as_str) == Some("end"))
        {
            return Ok(c);
        }
    }
}

/// CPU time (user + system, all threads) the process `pid` has used so
/// far, from /proc/PID/task/*/schedstat (Linux; `None` elsewhere).
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Machine-wide CPU time from /proc/stat, in seconds: (busy, stolen by
/// the hypervisor). Linux; `None` elsewhere.
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (USER_HZ = 100);
    // interrupts are left out (loopback traffic is ours).
    let busy = f.first()? + f.get(1)? + f.get(2)?;
    Some((busy as f64 / 100.0, *f.get(7)? as f64 / 100.0))
}

/// Where the machine's CPU went during the timed walks: other processes'
/// share and the hypervisor's steal, each as a fraction of all cores.
struct Interference {
    start: Instant,
    machine: Option<(f64, f64)>,
    ours: Option<u64>,
}

impl Interference {
    fn begin(server: Option<u32>) -> Interference {
        Interference {
            start: Instant::now(),
            machine: machine_cpu(),
            ours: Self::ours(server),
        }
    }

    /// CPU time of this process and the server so far, in ns.
    fn ours(server: Option<u32>) -> Option<u64> {
        Some(cpu_ns(std::process::id())? + cpu_ns(server?)?)
    }

    /// (other processes, steal) as fractions of the machine.
    fn end(&self, server: Option<u32>) -> Option<(f64, f64)> {
        let (busy0, steal0) = self.machine?;
        let (busy1, steal1) = machine_cpu()?;
        let ours = Self::ours(server)?.saturating_sub(self.ours?) as f64 / 1e9;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let capacity = self.start.elapsed().as_secs_f64() * cores;
        Some((
            ((busy1 - busy0 - ours) / capacity).max(0.0),
            (steal1 - steal0) / capacity,
        ))
    }
}

/// One user's walks.
#[derive(Default)]
struct Walks {
    secs: Vec<f64>,
    cpu: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// get_tree over `tree` with and without an ACL, alternating.
pub async fn acltree_suite(args: &Args) -> anyhow::Result<()> {
    let n = args.tree_entries;
    let kc = start_keycard(args).await?;
    let pid = kc.child.as_ref().map(std::process::Child::id);
    let t0 = Instant::now();
    load_tree(kc.addr, n).await?;
    eprintln!(
        "keycard      loaded {n} entries in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let rules = setup_auth(kc.addr).await?;
    let mut open = login(kc.addr, OPEN_USER).await?;
    let mut bound = login(kc.addr, ACL_USER).await?;
    let mut results = [Walks::default(), Walks::default()];
    let mut seq = 10i64;
    // Round 0 warms up (page cache, compiled ACL) and is not counted; each
    // user goes first in every other round, so neither always walks first.
    let mut interference = Interference::begin(pid);
    for round in 0..=args.tree_walks {
        if round == 1 {
            interference = Interference::begin(pid);
        }
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for who in order {
            let c = if who == 0 { &mut open } else { &mut bound };
            seq += 1;
            let before = pid.and_then(cpu_ns);
            let (secs, items) = crate::walk_on(c, seq).await?;
            let after = pid.and_then(cpu_ns);
            if items != n {
                bail!(
                    "{} got {items} of {n} entries",
                    if who == 0 { OPEN_USER } else { ACL_USER }
                );
            }
            if round == 0 {
                continue;
            }
            results[who].secs.push(secs);
            if let (Some(b), Some(a)) = (before, after) {
                results[who].cpu.push(a.saturating_sub(b) as f64 / 1e9);
            }
        }
    }
    let busy = interference.end(pid);
    drop(kc);
    let names = [
        "no ACL (unbound user, full access)".to_owned(),
        format!("ACL of {rules} entries granting rxe on tree.#"),
    ];
    for (name, w) in names.iter().zip(&results) {
        let ms: Vec<String> = w.secs.iter().map(|s| format!("{:.0}", s * 1e3)).collect();
        eprintln!("keycard      {name}: walks (ms) {}", ms.join(" "));
    }
    println!(
        "### get_tree over {n} entries, with and without an ACL ({} walks each, alternating, median)\n",
        args.tree_walks
    );
    println!("| user | walk (s) | entries/s | best walk (s) | server CPU per walk (s) |");
    println!("|---|---:|---:|---:|---:|");
    for (name, w) in names.iter().zip(&results) {
        let m = median(&w.secs);
        let best = w.secs.iter().copied().fold(f64::INFINITY, f64::min);
        let cpu = if w.cpu.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{:.3}", median(&w.cpu))
        };
        println!(
            "| {name} | {m:.3} | {:.0} | {best:.3} | {cpu} |",
            n as f64 / m.max(1e-9)
        );
    }
    let [without, with] = &results;
    let ratio = median(&with.secs) / median(&without.secs).max(1e-9);
    print!("\nwith ACL / without, walk time: **{ratio:.2}×** (aim ≤ 1.3×)");
    if !with.cpu.is_empty() && !without.cpu.is_empty() {
        print!(
            "; server CPU: {:.2}×",
            median(&with.cpu) / median(&without.cpu).max(1e-9)
        );
    }
    println!();
    if let Some((others, steal)) = busy {
        println!(
            "(during the timed walks other processes used {:.0} % of the machine's CPU, the hypervisor stole {:.0} %)",
            others * 100.0,
            steal * 100.0
        );
    }
    println!();
    Ok(())
}
