//! End-to-end check of keycard-pgtest: start, crash-free stop and restart,
//! streaming standby, failover by promotion.

use std::io;
use std::time::{Duration, Instant};

use keycard_pgtest::{available, PgInstance};

#[test]
fn primary_restart_standby_promote() -> io::Result<()> {
    if !available() {
        eprintln!("skipping: PostgreSQL 15 is not installed (or no `postgres` user)");
        return Ok(());
    }

    let t = Instant::now();
    let primary = PgInstance::start()?;
    eprintln!("primary up on port {} in {:?}", primary.port(), t.elapsed());
    assert!(primary.is_up());
    assert_ne!(primary.port(), 5432);
    assert_eq!(
        primary.url("keycard"),
        format!("postgres://postgres@127.0.0.1:{}/keycard", primary.port())
    );
    assert_eq!(
        primary.psql(
            "postgres",
            "SELECT datname FROM pg_database WHERE datname = 'keycard'"
        )?,
        "keycard"
    );

    // Durable across a clean stop and restart, on the same port.
    primary.psql(
        "keycard",
        "CREATE TABLE kv (k text PRIMARY KEY, v text NOT NULL);\
         INSERT INTO kv VALUES ('a', 'one');",
    )?;
    let port = primary.port();
    primary.stop()?;
    assert!(!primary.is_up());
    primary.stop()?; // idempotent
    let t = Instant::now();
    primary.restart()?;
    eprintln!("primary restarted in {:?}", t.elapsed());
    assert_eq!(primary.port(), port);
    assert!(primary.is_up());
    assert_eq!(
        primary.psql("keycard", "SELECT v FROM kv WHERE k = 'a'")?,
        "one"
    );

    // Durable across an immediate shutdown (crash recovery).
    primary.psql("keycard", "INSERT INTO kv VALUES ('b', 'two')")?;
    primary.kill()?;
    assert!(!primary.is_up());
    primary.restart()?;
    assert_eq!(
        primary.psql("keycard", "SELECT v FROM kv WHERE k = 'b'")?,
        "two"
    );

    // Errors carry psql's stderr.
    let err = primary
        .psql("keycard", "SELECT * FROM no_such_table")
        .expect_err("query on a missing table must fail");
    assert!(err.to_string().contains("no_such_table"), "{err}");

    // A streaming standby sees new writes on the primary.
    let t = Instant::now();
    let standby = primary.standby()?;
    eprintln!("standby up on port {} in {:?}", standby.port(), t.elapsed());
    assert_ne!(standby.port(), primary.port());
    assert_eq!(standby.psql("keycard", "SELECT pg_is_in_recovery()")?, "t");
    assert_eq!(
        standby.psql("keycard", "SELECT v FROM kv WHERE k = 'a'")?,
        "one"
    );
    primary.psql("keycard", "INSERT INTO kv VALUES ('c', 'three')")?;
    standby.wait_until(
        "keycard",
        "SELECT v FROM kv WHERE k = 'c'",
        "three",
        Duration::from_secs(30),
    )?;
    // Read-only until promoted.
    assert!(standby
        .psql("keycard", "INSERT INTO kv VALUES ('x', 'nope')")
        .is_err());

    // Failover: primary goes away, the standby is promoted and takes writes.
    primary.stop()?;
    let t = Instant::now();
    standby.promote()?;
    eprintln!("standby promoted in {:?}", t.elapsed());
    assert_eq!(standby.psql("keycard", "SELECT pg_is_in_recovery()")?, "f");
    standby.psql("keycard", "INSERT INTO kv VALUES ('d', 'four')")?;
    assert_eq!(
        standby.psql(
            "keycard",
            "SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM kv"
        )?,
        "a=one,b=two,c=three,d=four"
    );

    let dirs = [primary.dir().to_owned(), standby.dir().to_owned()];
    drop(standby);
    drop(primary);
    for dir in dirs {
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
    Ok(())
}

#[test]
fn drop_kills_a_running_server() -> io::Result<()> {
    if !available() {
        eprintln!("skipping: PostgreSQL 15 is not installed (or no `postgres` user)");
        return Ok(());
    }
    let pg = PgInstance::start()?;
    let port = pg.port();
    drop(pg);
    // Nothing listens on the port any more.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "port {port} still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
