//! The few fields of an X.509 certificate (RFC 5280 §4.1) that keycard
//! reads itself: the subject's common name, the end of the validity
//! period, and whether an extension is there. The certificate has been verified by rustls-webpki before
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

/// The subject's one common name (`CN=`), or why there is none to go
/// by: a subject with no common name, with several (which of them a CA
/// checked is anyone's guess), or with one in a string type other than
/// UTF8String, PrintableString or IA5String (BMPString, TeletexString:
/// left out rather than guessed at).
pub fn common_name(cert: &[u8]) -> Result<String, &'static str> {
    let (_, mut subject) = validity_and_subject(cert).ok_or("the certificate does not parse")?;
    let mut found: Option<Option<String>> = None;
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
            if found.is_some() {
                return Err("the subject has several common names");
            }
            let text = [0x0c, 0x13, 0x16]
                .iter()
                .find_map(|&tag| der(value, tag).map(|(v, _)| v))
                .and_then(|v| std::str::from_utf8(v).ok());
            found = Some(text.map(str::to_owned));
        }
    }
    match found {
        None => Err("the subject has no common name"),
        Some(None) => Err("the subject's common name is in a string type keycard does not read"),
        Some(Some(name)) => Ok(name),
    }
}

/// Whether the certificate has the extension `oid` (its contents octets:
/// e.g. `[0x55, 0x1d, 0x25]`, extKeyUsage).
pub fn has_extension(cert: &[u8], oid: &[u8]) -> bool {
    extensions(cert).is_some_and(|mut exts| {
        while let Some((ext, rest)) = der(exts, 0x30) {
            exts = rest;
            if der(ext, 0x06).is_some_and(|(id, _)| id == oid) {
                return true;
            }
        }
        false
    })
}

/// id-ce-extKeyUsage (2.5.29.37).
pub const EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];

/// The contents of the `extensions` SEQUENCE, if the certificate has one.
fn extensions(cert: &[u8]) -> Option<&[u8]> {
    let (body, _) = der(cert, 0x30)?;
    let (tbs, _) = der(body, 0x30)?;
    let mut rest = match der(tbs, 0xa0) {
        Some((_, rest)) => rest,
        None => tbs,
    };
    // serial, signature, issuer, validity, subject, subjectPublicKeyInfo.
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30, 0x30] {
        rest = der(rest, tag)?.1;
    }
    // issuerUniqueID [1] and subjectUniqueID [2] may come first.
    for tag in [0x81, 0xa1, 0x82, 0xa2] {
        if let Some((_, after)) = der(rest, tag) {
            rest = after;
        }
    }
    let (explicit, _) = der(rest, 0xa3)?;
    der(explicit, 0x30).map(|(exts, _)| exts)
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
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 59 {
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
        assert_eq!(common_name(&der), Ok("svc-a".to_owned()));
        // 2031-03-01T00:00:00Z.
        assert_eq!(not_after_ms(&der), Some(1_930_089_600_000));
        // GeneralizedTime from 2050 on.
        let der = cert(&["ünï"], (2051, 1, 1));
        assert_eq!(common_name(&der), Ok("ünï".to_owned()));
        assert_eq!(not_after_ms(&der), Some(2_556_144_000_000));
        // None, or several: no name to go by.
        let der = cert(&[], (2030, 1, 1));
        assert!(common_name(&der)
            .expect_err("none")
            .contains("no common name"));
        // openssl's `-subj "/O=Acme/CN=svc-a/CN=second"` (rcgen keeps one
        // value per attribute type).
        let two = include_bytes!("../../../fuzz/inputs/x509/utctime-two-cns");
        assert!(common_name(two).expect_err("several").contains("several"));
    }

    #[test]
    fn finds_extensions() {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
        let plain = p.self_signed(&key).expect("cert").der().to_vec();
        assert!(!has_extension(&plain, EXT_KEY_USAGE));
        // The SAN is there (2.5.29.17).
        assert!(has_extension(&plain, &[0x55, 0x1d, 0x11]));
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let with = p.self_signed(&key).expect("cert").der().to_vec();
        assert!(has_extension(&with, EXT_KEY_USAGE));
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
            assert!(common_name(&der[..n]).is_err(), "{n}");
            assert!(!has_extension(&der[..n], EXT_KEY_USAGE));
            assert!(not_after_ms(&der[..n]).is_none() || n > 100, "{n}");
        }
        assert!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert_eq!(not_after_ms(&[0xff; 40]), None);
    }
}
