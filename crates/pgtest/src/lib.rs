//! Private, throw-away PostgreSQL 15 instances for failure tests.
//!
//! Every [`PgInstance`] is its own cluster: its own temporary directory (data
//! directory, server log, unix socket), its own free TCP port on 127.0.0.1 and
//! trust authentication. Nothing here touches the machine's shared server on
//! 127.0.0.1:5432 or its socket directory.
//!
//! The API is synchronous and blocking. From tokio tests, call it through
//! `tokio::task::spawn_blocking` (or directly when a short block of the runtime
//! thread is acceptable). Every wait is bounded by a timeout and returns an
//! error instead of hanging; errors carry the failed command's stderr, and
//! start failures carry the tail of the server log.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every
//! PostgreSQL program is executed as the `postgres` OS user (via
//! [`std::os::unix::process::CommandExt::uid`]), and the instance directory is
//! chowned to that user. As any other user, the programs run as that user.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! if !keycard_pgtest::available() {
//!     eprintln!("skipping: PostgreSQL 15 is not installed");
//!     return Ok(());
//! }
//! let pg = keycard_pgtest::PgInstance::start()?;
//! let url = pg.url("keycard"); // postgres://postgres@127.0.0.1:PORT/keycard
//! pg.psql("keycard", "CREATE TABLE t (x int)")?;
//! pg.kill()?; // crash it
//! pg.restart()?; // crash recovery, same port
//! # let _ = url;
//! # Ok(())
//! # }
//! ```

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where the PostgreSQL 15 programs live unless `KEYCARD_PGTEST_BIN` says otherwise.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Bound on every wait: a command, a start, a shutdown, a promotion.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The database [`PgInstance::start`] creates.
pub const DATABASE: &str = "keycard";

/// How many times a start is retried on a fresh port when the chosen one was
/// taken between probing and binding.
const PORT_ATTEMPTS: usize = 3;

/// Lines of server log included in start errors.
const LOG_TAIL_LINES: usize = 40;

/// The directory holding `initdb`, `pg_ctl`, `psql`, ...
pub fn bin_dir() -> PathBuf {
    std::env::var_os("KEYCARD_PGTEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR))
}

/// Whether private instances can be started here: `initdb` exists in
/// [`bin_dir`] and, when running as root, the `postgres` OS user exists.
/// Tests should print a message and skip when this is false.
pub fn available() -> bool {
    bin_dir().join("initdb").is_file() && run_as().is_ok()
}

/// One private PostgreSQL cluster. Dropping it shuts the server down
/// immediately and removes its directory.
pub struct PgInstance {
    /// Owned by the server's OS user; holds `data/`, `server.log`, the socket.
    root: TempDir,
    data: PathBuf,
    log: PathBuf,
    port: u16,
}

impl std::fmt::Debug for PgInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgInstance")
            .field("dir", &self.root.path())
            .field("port", &self.port)
            .finish()
    }
}

impl PgInstance {
    /// `initdb` a new cluster in a fresh temporary directory, start it on a
    /// free port, wait until it accepts connections and create the database
    /// `keycard`. The cluster is ready to be a replication primary
    /// (`wal_level = replica`, WAL senders, `replication` trust lines).
    pub fn start() -> io::Result<PgInstance> {
        let mut inst = PgInstance::empty()?;
        let mut initdb = pg_command("initdb", inst.root.path())?;
        initdb
            .arg("-D")
            .arg(&inst.data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        run(initdb, None, TIMEOUT)?;

        fs::write(inst.data.join("pg_hba.conf"), HBA)?;
        let mut conf = OpenOptions::new()
            .append(true)
            .open(inst.data.join("postgresql.conf"))?;
        write!(
            conf,
            "\n# keycard-pgtest: per-instance settings\ninclude '{LOCAL_CONF}'\n"
        )?;
        drop(conf);

        inst.boot_on_free_port()?;
        inst.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        Ok(inst)
    }

    /// A streaming-replication hot standby of `self`: `pg_basebackup -R` into
    /// its own directory, started on its own port, returned once it accepts
    /// (read-only) connections and its WAL receiver is streaming.
    pub fn standby(&self) -> io::Result<PgInstance> {
        let mut inst = PgInstance::empty()?;
        let mut backup = pg_command("pg_basebackup", inst.root.path())?;
        backup
            .arg("-D")
            .arg(&inst.data)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-w", "-R", "-X", "stream"])
            .args(["-c", "fast", "--no-sync"]);
        run(backup, None, TIMEOUT)?;
        // The copied postgresql.conf includes the copied per-instance file:
        // rewriting that file gives the standby its own port and socket dir.
        inst.boot_on_free_port()?;
        inst.wait_until(
            "postgres",
            "SELECT status FROM pg_stat_wal_receiver",
            "streaming",
            TIMEOUT,
        )?;
        Ok(inst)
    }

    /// The TCP port the server listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB` (trust auth, no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The instance directory (data directory, log, socket live under it).
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the server log (empty if there is none yet).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Fast shutdown (`pg_ctl stop -m fast`), waiting until it is down.
    /// Stopping a server that is not running is not an error.
    pub fn stop(&self) -> io::Result<()> {
        self.shutdown("fast")
    }

    /// Immediate shutdown (`pg_ctl stop -m immediate`): no checkpoint, the next
    /// start runs crash recovery. Killing a server that is not running is not
    /// an error.
    pub fn kill(&self) -> io::Result<()> {
        self.shutdown("immediate")
    }

    /// Start the server again, on the same port and directory, and wait until
    /// it accepts connections. A running server is first stopped (fast).
    pub fn restart(&self) -> io::Result<()> {
        if self.running()? {
            self.stop()?;
        }
        self.boot()
    }

    /// Whether the server accepts connections right now (`pg_isready`).
    pub fn is_up(&self) -> bool {
        let Ok(mut cmd) = pg_command("pg_isready", self.root.path()) else {
            return false;
        };
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-t", "2"]);
        run_status(cmd, None, Duration::from_secs(5)).is_ok_and(|out| out.status.success())
    }

    /// Promote a standby (`pg_ctl promote -w`) and wait until it accepts
    /// writes (`pg_is_in_recovery()` is false).
    pub fn promote(&self) -> io::Result<()> {
        let mut cmd = self.pg_ctl()?;
        cmd.args(["promote", "-w", "-t", &TIMEOUT.as_secs().to_string()]);
        run(cmd, None, TIMEOUT + Duration::from_secs(5))?;
        self.wait_until("postgres", "SELECT pg_is_in_recovery()", "f", TIMEOUT)
    }

    /// Run `sql` with `psql -X -q -At -v ON_ERROR_STOP=1` (as the server's OS
    /// user, over TCP) against database `db`. The script is fed on stdin, so
    /// several `;`-separated statements run one after the other, each in its
    /// own transaction unless the script says otherwise. Returns the rows
    /// printed (unaligned, `|`-separated, tuples only; command tags are
    /// suppressed) with the final newline removed. Fails, with psql's stderr,
    /// on the first error.
    pub fn psql(&self, db: &str, sql: &str) -> io::Result<String> {
        let mut cmd = pg_command("psql", self.root.path())?;
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db])
            .env("PGCONNECT_TIMEOUT", "10");
        let out = run(cmd, Some(sql), TIMEOUT)?;
        let mut stdout = out.stdout;
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// Poll `psql(db, sql)` until its output equals `expected`, for at most
    /// `timeout`. The error names the last output or error seen.
    pub fn wait_until(
        &self,
        db: &str,
        sql: &str,
        expected: &str,
        timeout: Duration,
    ) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(10);
        loop {
            let last = match self.psql(db, sql) {
                Ok(out) if out == expected => return Ok(()),
                Ok(out) => format!("last output: {out:?}"),
                Err(e) => format!("last error: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "timed out after {timeout:?} waiting for {sql:?} on port {} to return \
                         {expected:?}; {last}",
                        self.port
                    ),
                ));
            }
            thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(200));
        }
    }

    // ----- internals -----

    /// A fresh, empty instance directory owned by the server's OS user.
    fn empty() -> io::Result<PgInstance> {
        let root = tempfile::Builder::new()
            .prefix("keycard-pgtest-")
            .tempdir()?;
        if let Some((uid, gid)) = run_as().map_err(io::Error::other)? {
            std::os::unix::fs::chown(root.path(), Some(uid), Some(gid))?;
        }
        let data = root.path().join("data");
        let log = root.path().join("server.log");
        Ok(PgInstance {
            root,
            data,
            log,
            port: 0,
        })
    }

    /// Pick a free port, write the per-instance settings and start; retry on a
    /// new port when the one picked was taken in the meantime.
    fn boot_on_free_port(&mut self) -> io::Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.port = free_port()?;
            self.write_local_conf()?;
            match self.boot() {
                Ok(()) => return Ok(()),
                Err(e) if attempt < PORT_ATTEMPTS && port_clash(&e) => {
                    // Make sure nothing half-started survives before retrying.
                    let _ = self.kill();
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn write_local_conf(&self) -> io::Result<()> {
        let sock = self.root.path().to_string_lossy().replace('\'', "''");
        let conf = format!(
            "# Written by keycard-pgtest; rewritten for each instance.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             shared_buffers = 16MB\n\
             max_connections = 100\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             wal_keep_size = 128MB\n\
             hot_standby = on\n\
             logging_collector = off\n\
             log_min_messages = info\n",
            port = self.port,
        );
        fs::write(self.data.join(LOCAL_CONF), conf)
    }

    /// `pg_ctl start -w` then wait until `SELECT 1` works.
    fn boot(&self) -> io::Result<()> {
        let mut cmd = self.pg_ctl()?;
        cmd.arg("-l")
            .arg(&self.log)
            .args(["start", "-w", "-t", &TIMEOUT.as_secs().to_string()]);
        run(cmd, None, TIMEOUT + Duration::from_secs(5)).map_err(|e| self.with_log(e))?;
        self.wait_until("postgres", "SELECT 1", "1", TIMEOUT)
            .map_err(|e| self.with_log(e))
    }

    fn shutdown(&self, mode: &str) -> io::Result<()> {
        if !self.running()? {
            return Ok(());
        }
        let mut cmd = self.pg_ctl()?;
        cmd.args([
            "stop",
            "-m",
            mode,
            "-w",
            "-t",
            &TIMEOUT.as_secs().to_string(),
        ]);
        run(cmd, None, TIMEOUT + Duration::from_secs(5)).map_err(|e| self.with_log(e))?;
        Ok(())
    }

    /// `pg_ctl status`: 0 running, 3 not running, 4 no usable data directory.
    fn running(&self) -> io::Result<bool> {
        let mut cmd = self.pg_ctl()?;
        cmd.arg("status");
        let out = run_status(cmd, None, TIMEOUT)?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(3 | 4) => Ok(false),
            _ => Err(out.error()),
        }
    }

    fn pg_ctl(&self) -> io::Result<Command> {
        let mut cmd = pg_command("pg_ctl", self.root.path())?;
        cmd.arg("-D").arg(&self.data);
        Ok(cmd)
    }

    fn with_log(&self, e: io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!(
                "{e}\n--- last lines of {} (port {}) ---\n{}",
                self.log.display(),
                self.port,
                self.log_tail(LOG_TAIL_LINES)
            ),
        )
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        if !self.data.join("postmaster.pid").exists() {
            return;
        }
        let stopped = self.pg_ctl().ok().is_some_and(|mut cmd| {
            cmd.args(["stop", "-m", "immediate", "-w", "-t", "10"]);
            run_status(cmd, None, Duration::from_secs(15)).is_ok()
        });
        if !stopped {
            // Last resort: SIGQUIT (immediate shutdown) to the postmaster.
            let pid = fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if let Some(pid) = pid {
                let mut kill = Command::new("kill");
                kill.args(["-QUIT", &pid]);
                let _ = run_status(kill, None, Duration::from_secs(5));
            }
        }
        // `root` (a TempDir) is removed when the fields drop.
    }
}

const LOCAL_CONF: &str = "keycard_pgtest.conf";

const HBA: &str = "\
# Written by keycard-pgtest: trust, local and 127.0.0.1 only.
local   all             all                     trust
host    all             all     127.0.0.1/32    trust
local   replication     all                     trust
host    replication     all     127.0.0.1/32    trust
";

/// A port nothing listens on right now (the OS picks it; may race).
fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn port_clash(e: &io::Error) -> bool {
    let msg = e.to_string();
    msg.contains("Address already in use") || msg.contains("could not bind")
}

/// `Some((uid, gid))` of `postgres` when running as root, `None` otherwise.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    static RUN_AS: OnceLock<Result<Option<(u32, u32)>, String>> = OnceLock::new();
    RUN_AS
        .get_or_init(|| {
            if effective_uid()? != 0 {
                return Ok(None);
            }
            let uid = id_of(&["-u", "postgres"])?;
            let gid = id_of(&["-g", "postgres"])?;
            Ok(Some((uid, gid)))
        })
        .clone()
}

fn effective_uid() -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective uid.
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    id_of(&["-u"])
}

fn id_of(args: &[&str]) -> Result<u32, String> {
    let out = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("id {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "id {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("id {}: {e}", args.join(" ")))
}

/// A PostgreSQL program from [`bin_dir`], set to run as the server's OS user
/// in `cwd`, with no inherited `PG*` variables and the C locale.
fn pg_command(program: &str, cwd: &Path) -> io::Result<Command> {
    let mut cmd = Command::new(bin_dir().join(program));
    cmd.current_dir(cwd).env("LC_ALL", "C");
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            cmd.env_remove(key);
        }
    }
    if let Some((uid, gid)) = run_as().map_err(io::Error::other)? {
        // std drops root's supplementary groups when it sets uid.
        cmd.uid(uid)
            .gid(gid)
            .env("HOME", cwd)
            .env("USER", "postgres")
            .env("LOGNAME", "postgres");
    }
    Ok(cmd)
}

#[derive(Debug)]
struct Output {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn error(&self) -> io::Error {
        let mut msg = format!("`{}` failed ({})", self.what, self.status);
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            let _ = write!(msg, "\nstderr:\n{stderr}");
        }
        let stdout = self.stdout.trim();
        if !stdout.is_empty() {
            let _ = write!(msg, "\nstdout:\n{}", last_lines(stdout, LOG_TAIL_LINES));
        }
        io::Error::other(msg)
    }
}

/// [`run_status`], turning an unsuccessful exit into an error.
fn run(cmd: Command, stdin: Option<&str>, timeout: Duration) -> io::Result<Output> {
    let out = run_status(cmd, stdin, timeout)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(out.error())
    }
}

/// Run `cmd` to completion within `timeout` (killing it past that), feeding
/// `stdin`. Output goes through unnamed temp files rather than pipes, so a
/// server that inherits them can never make this block.
fn run_status(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> io::Result<Output> {
    let what = describe(&cmd);
    let ctx = |e: io::Error| io::Error::new(e.kind(), format!("`{what}`: {e}"));
    let mut stdout = tempfile::tempfile().map_err(ctx)?;
    let mut stderr = tempfile::tempfile().map_err(ctx)?;
    let input = match stdin {
        Some(text) => {
            let mut f = tempfile::tempfile().map_err(ctx)?;
            f.write_all(text.as_bytes()).map_err(ctx)?;
            f.rewind().map_err(ctx)?;
            Stdio::from(f)
        }
        None => Stdio::null(),
    };
    cmd.stdin(input)
        .stdout(stdout.try_clone().map_err(ctx)?)
        .stderr(stderr.try_clone().map_err(ctx)?);
    let mut child = cmd.spawn().map_err(ctx)?;
    drop(cmd); // close our copies of the child's stdio

    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(2);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(ctx)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "`{what}` timed out after {timeout:?} and was killed\nstderr:\n{}",
                    read_back(&mut stderr).trim()
                ),
            ));
        }
        thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(25));
    };
    Ok(Output {
        stdout: read_back(&mut stdout),
        stderr: read_back(&mut stderr),
        what,
        status,
    })
}

fn read_back(f: &mut File) -> String {
    let mut buf = Vec::new();
    if f.rewind().is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn describe(cmd: &Command) -> String {
    let prog = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned();
    let args: Vec<_> = cmd.get_args().map(OsStr::to_string_lossy).collect();
    if args.is_empty() {
        prog
    } else {
        format!("{prog} {}", args.join(" "))
    }
}

fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), lines).to_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn last_lines(text: &str, lines: usize) -> &str {
    let text = text.trim_end();
    let mut start = text.len();
    for _ in 0..lines {
        match text[..start].rfind('\n') {
            Some(i) => start = i,
            None => return text,
        }
    }
    &text[start + 1..]
}

/// The machine's own PostgreSQL, which tests share (each in a schema of
/// its own): `KEYCARD_TEST_PG`, by default
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn shared_url() -> String {
    std::env::var("KEYCARD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema name no other test uses, on the shared database; dropped
/// (with everything in it) when this goes.
pub struct TestSchema {
    /// Its name: `kc_` and random lower-case letters and digits.
    pub name: String,
}

impl TestSchema {
    /// A fresh name (the schema itself is created by whoever opens it).
    pub fn new() -> TestSchema {
        let dir = tempfile::Builder::new()
            .prefix("kcschema")
            .tempdir()
            .map(|d| {
                d.path()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .ok()
            .flatten()
            .unwrap_or_default();
        let tail: String = dir
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        TestSchema {
            name: format!("kc_{}_{tail}", std::process::id()),
        }
    }

    /// The shared database's URL with this schema and `extra` query
    /// parameters (`a=b&c=d`, may be empty).
    pub fn url(&self, extra: &str) -> String {
        let base = shared_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("&{extra}")
        };
        format!("{base}{sep}schema={}{extra}", self.name)
    }
}

impl Default for TestSchema {
    fn default() -> Self {
        TestSchema::new()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // psql takes the URL as it is; never fails the test.
        let _ = Command::new("psql")
            .arg(shared_url())
            .args(["-X", "-q", "-c"])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_time_out_instead_of_hanging() {
        let mut cmd = Command::new("sleep");
        cmd.arg("10");
        let t = Instant::now();
        let err = run(cmd, None, Duration::from_millis(200)).expect_err("must time out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn failures_carry_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let err = run(cmd, None, TIMEOUT).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("boom") && msg.contains("sh -c"), "{msg}");
    }

    #[test]
    fn stdin_is_fed() -> io::Result<()> {
        let out = run(Command::new("cat"), Some("select 1;\n"), TIMEOUT)?;
        assert_eq!(out.stdout, "select 1;\n");
        Ok(())
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb", 5), "a\nb");
        assert_eq!(last_lines("", 3), "");
    }
}
