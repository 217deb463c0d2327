//! `keycard cert init`: certificates for trying TLS out.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

#[derive(Subcommand, Debug)]
pub(super) enum CertCmd {
    /// Make a CA and a server certificate it signs, for trying TLS out:
    /// DIR/ca.pem (the CA, for clients' --tls-ca, and for the server's
    /// --tls-client-ca), DIR/server.pem (the server's certificate, then
    /// the CA) and DIR/server.key (for `keycard serve --tls-cert
    /// DIR/server.pem --tls-key DIR/server.key`); with --client NAME,
    /// DIR/client-NAME.pem and DIR/client-NAME.key, a client certificate
    /// whose subject CN is NAME (for `cert` logins with --tls-cert and
    /// --tls-key). The CA's key is not kept. Keys are ECDSA P-256 and are written
    /// readable by their owner only. An existing file is never replaced.
    /// For production, use certificates from your own CA.
    Init {
        /// The folder to write into (created if missing).
        dir: PathBuf,
        /// A name the server's certificate holds: a DNS name or an IP
        /// address (repeatable) [default: localhost and 127.0.0.1].
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Also make a client certificate for user NAME (repeatable).
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
        /// Days the certificates last [default: 90].
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
}

pub(super) fn cert(cmd: CertCmd) -> anyhow::Result<()> {
    match cmd {
        CertCmd::Init {
            dir,
            names,
            clients,
            days,
        } => init(&dir, names, &clients, days),
    }
}

fn init(dir: &Path, mut names: Vec<String>, clients: &[String], days: u32) -> anyhow::Result<()> {
    if days == 0 || days > 3650 {
        bail!("--days must be 1 to 3650");
    }
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into()];
    }
    for c in clients {
        // The name goes into a file name: a user name, and nothing that
        // could leave DIR or hide.
        let fine = !c.is_empty()
            && c.len() <= 64
            && !c.starts_with('.')
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-@".contains(ch));
        if !fine {
            bail!(
                "--client {}: use 1 to 64 letters, digits, '.', '_', '-' or '@', not starting with '.'",
                crate::render::terminal(c)
            );
        }
    }
    // Two names one file system may take for the same file.
    let mut seen = std::collections::BTreeSet::new();
    if let Some(c) = clients
        .iter()
        .find(|c| !seen.insert(c.to_ascii_lowercase()))
    {
        bail!(
            "--client {}: named twice (file names may not tell case apart)",
            crate::render::terminal(c)
        );
    }
    let mut files = ["ca.pem", "server.pem", "server.key"]
        .map(|f| dir.join(f))
        .to_vec();
    for c in clients {
        files.push(dir.join(format!("client-{c}.pem")));
        files.push(dir.join(format!("client-{c}.key")));
    }
    if let Some(there) = files.iter().find(|f| f.exists()) {
        bail!(
            "{} exists: keycard cert init never replaces a file (choose another folder)",
            there.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The command runs on the operator's machine, not in the server: the
    // system clock is the time it means.
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(i64::from(days));

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "keycard test CA (keycard cert init)");
    ca.not_before = now;
    ca.not_after = until;
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names.clone())
        .context("a --name is neither a DNS name nor an IP address")?;
    server
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = now;
    server.not_after = until;
    let server = server.signed_by(&key, &ca)?;

    write_new(&files[0], ca.pem().as_bytes(), 0o644)?;
    write_new(
        &files[1],
        format!("{}{}", server.pem(), ca.pem()).as_bytes(),
        0o644,
    )?;
    write_new(&files[2], key.serialize_pem().as_bytes(), 0o600)?;
    for (i, c) in clients.iter().enumerate() {
        let key = KeyPair::generate()?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, c.as_str());
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.not_before = now;
        client.not_after = until;
        let client = client.signed_by(&key, &ca)?;
        let (pem, key_file) = (&files[3 + 2 * i], &files[4 + 2 * i]);
        write_new(
            pem,
            format!("{}{}", client.pem(), ca.pem()).as_bytes(),
            0o644,
        )?;
        write_new(key_file, key.serialize_pem().as_bytes(), 0o600)?;
    }
    let shown = |p: &Path| crate::render::terminal(&p.display().to_string()).into_owned();
    say_err!(
        "made a CA ({}) and a certificate for {} ({}, key {}), valid {days} days",
        shown(&files[0]),
        names.join(", "),
        shown(&files[1]),
        shown(&files[2])
    );
    say_err!(
        "serve with: keycard serve --tls-cert {} --tls-key {}",
        shown(&files[1]),
        shown(&files[2])
    );
    say_err!("connect with: keycard … --tls-ca {}", shown(&files[0]));
    for (i, c) in clients.iter().enumerate() {
        say_err!(
            "{c}'s client certificate: keycard … --tls-cert {} --tls-key {} (serve with --tls-client-ca {})",
            shown(&files[3 + 2 * i]),
            shown(&files[4 + 2 * i]),
            shown(&files[0])
        );
    }
    Ok(())
}

/// Writes a file that must not exist yet, with `mode` on Unix.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = open
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
