//! The few fields of an X.509 certificate (RFC 5280 §4.1) that keycard
//! reads itself: the subject's common names and the end of the validity
//! period. The certificate has been verified by rustls-webpki before
//! these run on it, but they are written for hostile input all the same:
//! anything that does not have the expected shape gives nothing.

use crate::binding::der;

/// id-at-commonName (2.5.4.3).
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The fields of the `TBSCertificate` up to `subject`: (validity's
/// contents, subject's contents).
fn validity_and_subject(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    // Certificate ::= SEQUENCE { tbsCertificate TBSCertificate, … }
    let (body, _) = der(cert, 0x30)?;
    let (tbs, _) = der(body, 0x30)?;
    // version [0] EXPLICIT is optional (absent: v1).
    let rest = match der(tbs, 0xa0) {
        Some((_, rest)) => rest,
        None => tbs,
    };
    let (_serial, rest) = der(rest, 0x02)?;
    let (_signature, rest) = der(rest, 0x30)?;
    let (_issuer, rest) = der(rest, 0x30)?;
    let (validity, rest) = der(rest, 0x30)?;
    let (subject, _) = der(rest, 0x30)?;
    Some((validity, subject))
}

/// The subject's common names (`CN=`), in the order they appear, those
/// spelled as UTF8String, PrintableString or IA5String (the others —
/// BMPString, TeletexString — are left out rather than guessed at).
pub fn common_names(cert: &[u8]) -> Vec<String> {
    let Some((_, mut subject)) = validity_and_subject(cert) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    // Name ::= SEQUENCE OF RelativeDistinguishedName (SET OF
    // AttributeTypeAndValue ::= SEQUENCE { type OID, value ANY }).
    while let Some((mut rdn, rest)) = der(subject, 0x31) {
        subject = rest;
        while let Some((atv, rest)) = der(rdn, 0x30) {
            rdn = rest;
            let Some((oid, value)) = der(atv, 0x06) else {
                continue;
            };
            if oid != COMMON_NAME {
                continue;
            }
            let text = [0x0c, 0x13, 0x16]
                .iter()
                .find_map(|&tag| der(value, tag).map(|(v, _)| v));
            if let Some(s) = text.and_then(|v| std::str::from_utf8(v).ok()) {
                names.push(s.to_owned());
            }
        }
    }
    names
}

/// The end of the certificate's validity (`notAfter`), Unix ms.
pub fn not_after_ms(cert: &[u8]) -> Option<u64> {
    let (validity, _) = validity_and_subject(cert)?;
    let after = skip_time(validity)?;
    time_ms(after)
}

/// What follows the `Time` at the start of `input`.
fn skip_time(input: &[u8]) -> Option<&[u8]> {
    der(input, 0x17)
        .or_else(|| der(input, 0x18))
        .map(|(_, rest)| rest)
}

/// A `Time` (UTCTime `YYMMDDHHMMSSZ`, or GeneralizedTime
/// `YYYYMMDDHHMMSSZ`, RFC 5280 §4.1.2.5) as Unix ms.
fn time_ms(input: &[u8]) -> Option<u64> {
    let (text, year) = if let Some((t, _)) = der(input, 0x17) {
        let t = t.strip_suffix(b"Z")?;
        if t.len() != 12 {
            return None;
        }
        // RFC 5280: YY ≥ 50 is 19YY, else 20YY.
        let yy = digits(&t[..2])?;
        (&t[2..], if yy >= 50 { 1900 + yy } else { 2000 + yy })
    } else {
        let (t, _) = der(input, 0x18)?;
        let t = t.strip_suffix(b"Z")?;
        if t.len() != 14 {
            return None;
        }
        (&t[4..], digits(&t[..4])?)
    };
    let month = digits(&text[0..2])?;
    let day = digits(&text[2..4])?;
    let (h, m, s) = (
        digits(&text[4..6])?,
        digits(&text[6..8])?,
        digits(&text[8..10])?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let secs = days
        .checked_mul(86_400)?
        .checked_add(h * 3600 + m * 60 + s)?;
    secs.checked_mul(1000)
}

/// ASCII decimal digits as a number.
fn digits(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
    })
}

/// Days from 1970-01-01 to a proleptic Gregorian date (none before
/// 1970).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    // Howard Hinnant's algorithm, shifted so that March starts the year.
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn cert(cns: &[&str], not_after: (i32, u8, u8)) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["host.example".to_owned()]).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        for cn in cns {
            p.distinguished_name.push(DnType::CommonName, *cn);
        }
        p.distinguished_name.push(DnType::OrganizationName, "Acme");
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        p.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn reads_the_common_name_and_the_end_of_validity() {
        let der = cert(&["svc-a"], (2031, 3, 1));
        assert_eq!(common_names(&der), vec!["svc-a".to_owned()]);
        // 2031-03-01T00:00:00Z.
        assert_eq!(not_after_ms(&der), Some(1_930_089_600_000));
        // GeneralizedTime from 2050 on.
        let der = cert(&["ünï"], (2051, 1, 1));
        assert_eq!(common_names(&der), vec!["ünï".to_owned()]);
        assert_eq!(not_after_ms(&der), Some(2_556_144_000_000));
        let der = cert(&[], (2030, 1, 1));
        assert!(common_names(&der).is_empty());
    }

    #[test]
    fn times_are_checked() {
        let utc = |s: &str| {
            let mut v = vec![0x17, s.len() as u8];
            v.extend_from_slice(s.as_bytes());
            time_ms(&v)
        };
        assert_eq!(utc("700101000000Z"), Some(0));
        assert_eq!(utc("000229120000Z"), Some(951_825_600_000));
        assert_eq!(utc("491231235959Z"), Some(2_524_607_999_000));
        for bad in [
            "701301000000Z",
            "700100000000Z",
            "7001010000Z",
            "70010100000aZ",
            "700101000000",
        ] {
            assert_eq!(utc(bad), None, "{bad}");
        }
    }

    /// Truncated or garbage input gives nothing, never a panic.
    #[test]
    fn a_broken_certificate_gives_nothing() {
        let der = cert(&["svc-a"], (2031, 3, 1));
        for n in 0..der.len() {
            let _ = common_names(&der[..n]);
            assert!(not_after_ms(&der[..n]).is_none() || n > 100, "{n}");
        }
        assert!(common_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_empty());
        assert_eq!(not_after_ms(&[0xff; 40]), None);
    }
}
