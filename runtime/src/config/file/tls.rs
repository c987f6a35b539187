//! A handler entry's TLS keys (`tls_cert`, `tls_key`, `tls_client_ca`,
//! `tls_ca`, `tls_alpn`, `tls_sni`), checked when the file is read.

use super::*;

/// One `tls_sni` entry: `{ cert = "...", key = "..." }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSni {
    cert: Spanned<String>,
    key: Spanned<String>,
}

/// A handler entry's `tls_cert` and `tls_key`: both or neither, only with
/// a `tls://` listener, and loadable (checked here, so that `loopd check`
/// names the file and what is wrong with it).
pub(super) fn tls_keys(
    src: &Source<'_>,
    h: &RawHandler,
    entry: &mut HandlerConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<(), Error> {
    let has_tls = entry.listen.iter().any(|a| matches!(a, ListenAddr::Tls(_)));
    let path = |k: &str, v: &Option<Spanned<String>>| -> Result<Option<PathBuf>, Error> {
        match v {
            Some(s) if s.get_ref().is_empty() => {
                Err(src.error(Some(s.span()), &key(k), "is empty"))
            }
            Some(s) if !has_tls => Err(src.error(
                Some(s.span()),
                &key(k),
                "only applies to tls:// listeners, and this handler has none",
            )),
            Some(s) => Ok(Some(PathBuf::from(s.get_ref()))),
            None => Ok(None),
        }
    };
    entry.tls_cert = path("tls_cert", &h.tls_cert)?;
    entry.tls_key = path("tls_key", &h.tls_key)?;
    entry.tls_client_ca = path("tls_client_ca", &h.tls_client_ca)?;
    if let Some(ca) = &h.tls_ca {
        if ca.get_ref().is_empty() {
            return Err(src.error(Some(ca.span()), &key("tls_ca"), "is empty"));
        }
        let p = PathBuf::from(ca.get_ref());
        #[cfg(feature = "tls")]
        crate::tls::load_client(Some(&p), None)
            .map_err(|e| src.error(Some(ca.span()), &key("tls_ca"), e))?;
        entry.tls_ca = Some(p);
    }
    // The certificate outbound connections present: both keys or neither,
    // loadable and matching.
    match (&h.tls_connect_cert, &h.tls_connect_key) {
        (None, None) => {}
        (Some(c), Some(k)) => {
            for (name, v) in [("tls_connect_cert", c), ("tls_connect_key", k)] {
                if v.get_ref().is_empty() {
                    return Err(src.error(Some(v.span()), &key(name), "is empty"));
                }
            }
            let (cp, kp) = (PathBuf::from(c.get_ref()), PathBuf::from(k.get_ref()));
            // Checked against the certificate itself as the CA: the CAs
            // (tls_ca, or the system's) are checked at start.
            #[cfg(feature = "tls")]
            if let Err(e) = crate::tls::load_client(Some(&cp), Some((&cp, &kp))) {
                let (name, at) = if e.starts_with("tls_connect_key") {
                    ("tls_connect_key", k.span())
                } else {
                    ("tls_connect_cert", c.span())
                };
                return Err(src.error(Some(at), &key(name), e));
            }
            entry.tls_connect = Some((cp, kp));
        }
        (Some(c), None) => {
            return Err(src.error(
                Some(c.span()),
                &key("tls_connect_key"),
                "is missing: tls_connect_cert needs its key",
            ));
        }
        (None, Some(k)) => {
            return Err(src.error(
                Some(k.span()),
                &key("tls_connect_cert"),
                "is missing: tls_connect_key needs its certificate",
            ));
        }
    }
    if let Some(alpn) = &h.tls_alpn {
        let bad = |why: &str| Err(src.error(Some(alpn.span()), &key("tls_alpn"), why));
        if !has_tls {
            return bad("only applies to tls:// listeners, and this handler has none");
        }
        if alpn.get_ref().iter().any(|p| p.is_empty() || p.len() > 255) {
            return bad("each protocol name must be 1 to 255 bytes");
        }
        entry.tls_alpn = Some(alpn.get_ref().clone());
    }
    for (i, s) in h.tls_sni.iter().flatten().enumerate() {
        let at = |k: &str| key(&format!("tls_sni[{i}].{k}"));
        if !has_tls {
            return Err(src.error(
                Some(s.cert.span()),
                &key("tls_sni"),
                "only applies to tls:// listeners, and this handler has none",
            ));
        }
        for (k, v) in [("cert", &s.cert), ("key", &s.key)] {
            if v.get_ref().is_empty() {
                return Err(src.error(Some(v.span()), &at(k), "is empty"));
            }
        }
        let (c, k) = (
            PathBuf::from(s.cert.get_ref()),
            PathBuf::from(s.key.get_ref()),
        );
        // Loaded here, entry by entry, so an error names the entry.
        #[cfg(feature = "tls")]
        if let Err(e) = crate::tls::load_sni(&c, &k) {
            let (which, span) = if e.starts_with("tls_sni key") {
                ("key", s.key.span())
            } else {
                ("cert", s.cert.span())
            };
            return Err(src.error(Some(span), &at(which), e));
        }
        entry.tls_sni.push((c, k));
    }
    if !has_tls {
        return Ok(());
    }
    let (Some(cert), Some(key_path)) = (&entry.tls_cert, &entry.tls_key) else {
        let missing = if entry.tls_cert.is_none() {
            "tls_cert"
        } else {
            "tls_key"
        };
        return Err(src.error(
            Some(h.name.span()),
            &key(missing),
            "is missing: a tls:// listener needs tls_cert and tls_key (PEM files)",
        ));
    };
    #[cfg(feature = "tls")]
    {
        let alpn: Vec<&[u8]> = (entry.tls_alpn.iter().flatten())
            .map(|p| p.as_bytes())
            .collect();
        if let Err(e) = crate::tls::load_server(
            cert,
            key_path,
            entry.tls_client_ca.as_deref(),
            &alpn,
            &entry.tls_sni,
        ) {
            // A key that does not go with the certificate is the key's fault.
            let (k, at) = if e.starts_with("tls_cert") {
                (
                    "tls_cert".to_string(),
                    h.tls_cert.as_ref().map(|s| s.span()),
                )
            } else if e.starts_with("tls_client_ca") {
                (
                    "tls_client_ca".to_string(),
                    h.tls_client_ca.as_ref().map(|s| s.span()),
                )
            } else {
                ("tls_key".to_string(), h.tls_key.as_ref().map(|s| s.span()))
            };
            return Err(src.error(at, &key(&k), e));
        }
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (cert, key_path);
        return Err(src.error(
            Some(h.name.span()),
            &key("listen"),
            "tls:// listeners need loopd built with the `tls` feature",
        ));
    }
    #[allow(unreachable_code)]
    Ok(())
}
