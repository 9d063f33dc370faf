//! TLS for the lab's etcd clients: a throwaway CA (openssl), a server certificate for each
//! member (its address as subject alternative name) and one client certificate, which the
//! members require (`--client-cert-auth`). Peers still talk plain HTTP among themselves.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::cmd;

/// The files of the lab's TLS, all PEM.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    /// Each member's certificate and key, in member order.
    pub members: Vec<(PathBuf, PathBuf)>,
    pub client: (PathBuf, PathBuf),
}

impl EtcdTls {
    /// Makes the CA and the certificates in `dir` for members at `addrs`.
    pub fn make(dir: &Path, addrs: &[Ipv4Addr]) -> anyhow::Result<Self> {
        let ca = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=xdprobe lab etcd CA",
            "-keyout",
            path(&ca_key)?,
            "-out",
            path(&ca)?,
        ])?;
        let mut members = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let name = format!("etcd{}", i + 1);
            let ext = format!("subjectAltName=IP:{addr}\nextendedKeyUsage=serverAuth,clientAuth\n");
            members.push(signed(dir, &name, &ext, &ca, &ca_key)?);
        }
        let client = signed(dir, "client", "extendedKeyUsage=clientAuth\n", &ca, &ca_key)?;
        Ok(Self {
            ca,
            members,
            client,
        })
    }
}

/// A key and a certificate for `name` signed by the CA, with the extensions `ext`.
fn signed(
    dir: &Path,
    name: &str,
    ext: &str,
    ca: &Path,
    ca_key: &Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (key, csr, cert, extfile) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.ext")),
    );
    std::fs::write(&extfile, ext).with_context(|| format!("writing {}", extfile.display()))?;
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        path(&key)?,
        "-out",
        path(&csr)?,
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&csr)?,
        "-CA",
        path(ca)?,
        "-CAkey",
        path(ca_key)?,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        path(&extfile)?,
        "-out",
        path(&cert)?,
    ])?;
    Ok((cert, key))
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    cmd::output(Command::new("openssl").args(args)).map(drop)
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("a non-UTF-8 path")
}
