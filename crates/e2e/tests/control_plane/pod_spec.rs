//! What a kubelet does with a pod's spec, for the apply-as-shipped scenarios: the image mapped to
//! the locally built binary through the Dockerfile's stages (its `ENTRYPOINT` and `CMD`), the
//! container's `command`, `args` (with `$(VAR)` expansion) and `env` (values and the downward
//! API), its volumes (`emptyDir`, `configMap`, `secret`, and `projected` ones: the ServiceAccount
//! token from the TokenRequest API bound to the pod, `kube-root-ca.crt`, the namespace) bind-mounted
//! at their `mountPath` in a mount namespace of the pod's own, the user of its `securityContext`,
//! `KUBERNETES_SERVICE_HOST/PORT`, `readOnlyRootFilesystem` (the root mount and `/run` read-only
//! in that mount namespace; the volumes stay writable), and its `readinessProbe` (HTTP GET)
//! deciding when it is Ready.
//!
//! Not emulated, and why: image pulls (the binaries are local), dropped capabilities beyond what
//! `setpriv` to a non-root user leaves, resource limits, liveness probes (a dead process is simply gone),
//! and more than one container per pod (the shipped pods have one). A spec needing any other
//! kind of volume, env source or probe is refused with the reason, and the pod never turns Ready.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};
use serde_json::json;

use crate::cluster::GIVE_UP;

/// Where pods reach kube-apiserver (`KUBERNETES_SERVICE_HOST/PORT`): the node's address on the pod
/// network. A kubelet sets the `kubernetes` Service's ClusterIP there and kube-proxy forwards it;
/// this harness has no kube-proxy, so it names the address kube-apiserver listens on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ApiEndpoint(pub SocketAddr);

/// A pod's process, ready to spawn.
pub(crate) struct Launch {
    /// The locally built binary the image maps to.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// `(host directory or file, mountPath)`, bind-mounted in the pod's mount namespace.
    pub mounts: Vec<(PathBuf, String)>,
    /// `runAsUser`, `runAsGroup`.
    pub user: Option<(i64, i64)>,
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// The HTTP GET readiness probe: `(port, path, period, failure threshold)`.
    pub readiness: Option<Probe>,
}

/// An HTTP GET probe on the pod's address.
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    pub port: u16,
    pub path: String,
    pub initial_delay: Duration,
    pub period: Duration,
    pub failure_threshold: u32,
}

/// ENTRYPOINT and CMD of each named stage of the repository's Dockerfile: an image
/// `…/NAME:TAG` runs stage `NAME`.
fn dockerfile_stages() -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let path = crate::support::e2e::workspace_root().join("Dockerfile");
    let text = std::fs::read_to_string(&path).expect("reading the Dockerfile");
    let mut stages = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        let mut words = line.splitn(2, ' ');
        let (Some(instruction), rest) = (words.next(), words.next().unwrap_or("")) else {
            continue;
        };
        let array = || serde_json::from_str::<Vec<String>>(rest.trim()).ok();
        match instruction.to_ascii_uppercase().as_str() {
            "FROM" => {
                current = rest
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .find(|w| w[0].eq_ignore_ascii_case("AS"))
                    .map(|w| w[1].to_owned());
            }
            "ENTRYPOINT" => {
                if let (Some(stage), Some(a)) = (&current, array()) {
                    let entry: &mut (Vec<String>, Vec<String>) =
                        stages.entry(stage.clone()).or_default();
                    entry.0 = a;
                }
            }
            "CMD" => {
                if let (Some(stage), Some(a)) = (&current, array()) {
                    let entry: &mut (Vec<String>, Vec<String>) =
                        stages.entry(stage.clone()).or_default();
                    entry.1 = a;
                }
            }
            _ => {}
        }
    }
    stages
}

/// The binary an executable path of the image names (`/ws-metrics-adapter` → the built one).
fn local_binary(image_path: &str) -> Result<PathBuf, String> {
    let name = image_path.rsplit('/').next().unwrap_or(image_path);
    match name {
        "ws-metrics-adapter" | "ws-demo" => Ok(crate::support::e2e::bin(name)),
        other => Err(format!(
            "no local binary for the image's executable {other:?}"
        )),
    }
}

/// `$(VAR)` expanded from `env` as a kubelet does; `$$` is a literal `$`, an unknown `$(VAR)`
/// stays as written.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    let _ = write!(out, "$({name})");
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A downward-API field of the pod.
fn field(pod: &Pod, path: &str, ip: Ipv4Addr) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => ip.to_string(),
        other => return Err(format!("fieldRef {other} is not emulated")),
    })
}

/// Writes `bytes` at `dir/rel` (mode 0644, as a kubelet's default `defaultMode: 0644`).
fn write_file(dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A ConfigMap's data, waiting for it to exist (`kube-root-ca.crt` is published by a controller
/// shortly after the namespace appears; a kubelet retries the same way).
async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let start = std::time::Instant::now();
    loop {
        match api.get_opt(name).await {
            Ok(Some(cm)) => return Ok(cm.data.unwrap_or_default()),
            Ok(None) if start.elapsed() < GIVE_UP => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(None) => return Err(format!("ConfigMap {ns}/{name} does not exist")),
            Err(e) => return Err(format!("reading ConfigMap {ns}/{name}: {e}")),
        }
    }
}

/// A Secret's data, waiting for it to exist.
async fn secret(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let start = std::time::Instant::now();
    loop {
        match api.get_opt(name).await {
            Ok(Some(s)) => {
                return Ok(s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect());
            }
            Ok(None) if start.elapsed() < GIVE_UP => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(None) => return Err(format!("Secret {ns}/{name} does not exist")),
            Err(e) => return Err(format!("reading Secret {ns}/{name}: {e}")),
        }
    }
}

/// A ServiceAccount token bound to the pod, from the TokenRequest API (what a kubelet mounts for
/// a projected `serviceAccountToken` source).
async fn token_request(
    client: &Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration: i64,
) -> Result<String, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let mut spec = json!({
        "expirationSeconds": expiration,
        "boundObjectRef": {
            "apiVersion": "v1", "kind": "Pod",
            "name": pod.metadata.name, "uid": pod.metadata.uid,
        },
    });
    if let Some(aud) = audience {
        spec["audiences"] = json!([aud]);
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let req = http::Request::post(format!(
        "/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&body).expect("json"))
    .expect("request");
    let answer: serde_json::Value = client
        .request(req)
        .await
        .map_err(|e| format!("TokenRequest for {ns}/{sa}: {e}"))?;
    answer["status"]["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("TokenRequest for {ns}/{sa}: no token in {answer}"))
}

/// Fills the pod's volume directories under `dir` (one per volume); returns name → directory.
async fn volumes(
    client: &Client,
    pod: &Pod,
    ip: Ipv4Addr,
    dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    use std::os::unix::fs::PermissionsExt;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let vdir = dir.join(&v.name);
        std::fs::create_dir_all(&vdir).map_err(|e| format!("{}: {e}", vdir.display()))?;
        if v.empty_dir.is_some() {
            // A kubelet's emptyDir is world-writable: the container's user owns nothing else.
            std::fs::set_permissions(&vdir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("{}: {e}", vdir.display()))?;
        } else if let Some(cm) = &v.config_map {
            let data = config_map(client, &ns, &cm.name).await?;
            for (key, path) in pick(
                &data.keys().cloned().collect::<Vec<_>>(),
                cm.items.as_deref(),
            ) {
                write_file(&vdir, &path, data[&key].as_bytes())?;
            }
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = secret(client, &ns, &name).await?;
            for (key, path) in pick(
                &data.keys().cloned().collect::<Vec<_>>(),
                s.items.as_deref(),
            ) {
                write_file(&vdir, &path, &data[&key])?;
            }
        } else if let Some(projected) = &v.projected {
            for source in projected.sources.clone().unwrap_or_default() {
                if let Some(t) = &source.service_account_token {
                    let token = token_request(
                        client,
                        pod,
                        t.audience.as_deref(),
                        t.expiration_seconds.unwrap_or(3600),
                    )
                    .await?;
                    write_file(&vdir, &t.path, token.as_bytes())?;
                } else if let Some(cm) = &source.config_map {
                    let data = config_map(client, &ns, &cm.name).await?;
                    for (key, path) in pick(
                        &data.keys().cloned().collect::<Vec<_>>(),
                        cm.items.as_deref(),
                    ) {
                        write_file(&vdir, &path, data[&key].as_bytes())?;
                    }
                } else if let Some(d) = &source.downward_api {
                    for item in d.items.clone().unwrap_or_default() {
                        let f = item
                            .field_ref
                            .ok_or("downwardAPI item without fieldRef is not emulated")?;
                        write_file(&vdir, &item.path, field(pod, &f.field_path, ip)?.as_bytes())?;
                    }
                } else {
                    return Err(format!("volume {}: projected source not emulated", v.name));
                }
            }
        } else {
            return Err(format!(
                "volume {}: this kind of volume is not emulated",
                v.name
            ));
        }
        out.insert(v.name, vdir);
    }
    Ok(out)
}

/// `(key, file path)` pairs of a ConfigMap or Secret volume: every key, or the listed `items`.
fn pick(
    keys: &[String],
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> Vec<(String, String)> {
    match items {
        Some(items) => items
            .iter()
            .filter(|i| keys.contains(&i.key))
            .map(|i| (i.key.clone(), i.path.clone()))
            .collect(),
        None => keys.iter().map(|k| (k.clone(), k.clone())).collect(),
    }
}

/// A container port by number or by name.
fn port(
    container: &Container,
    port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
) -> Result<u16, String> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

/// Everything needed to start the pod's one container: the volumes are written now (tokens
/// requested, ConfigMaps and Secrets read), under `dir`.
pub(crate) async fn prepare(
    client: &Client,
    pod: &Pod,
    ip: Ipv4Addr,
    api: ApiEndpoint,
    dir: &Path,
) -> Result<Launch, String> {
    let spec = pod.spec.as_ref().ok_or("pod without spec")?;
    let [container] = spec.containers.as_slice() else {
        return Err(format!(
            "{} containers: the harness runs pods of exactly one",
            spec.containers.len()
        ));
    };
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err("init containers are not emulated".into());
    }
    // The image: `[registry/]path/NAME[:tag][@digest]` runs the Dockerfile's stage NAME.
    let image = container.image.clone().unwrap_or_default();
    let without_digest = image.split('@').next().unwrap_or_default();
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    let stage = last.split(':').next().unwrap_or_default();
    let stages = dockerfile_stages();
    let (entrypoint, cmd) = stages
        .get(stage)
        .ok_or_else(|| format!("image {image:?}: the Dockerfile has no stage {stage:?}"))?;

    // Environment: the Service variables a kubelet injects, then the container's own.
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        (
            "HOSTNAME".into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        ("KUBERNETES_SERVICE_HOST".into(), api.0.ip().to_string()),
        ("KUBERNETES_SERVICE_PORT".into(), api.0.port().to_string()),
        (
            "KUBERNETES_SERVICE_PORT_HTTPS".into(),
            api.0.port().to_string(),
        ),
    ];
    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, Some(from)) => match &from.field_ref {
                Some(f) => field(pod, &f.field_path, ip)?,
                None => {
                    return Err(format!(
                        "env {}: only fieldRef sources are emulated",
                        e.name
                    ));
                }
            },
            (None, None) => String::new(),
        };
        env.push((e.name.clone(), value));
    }

    // command replaces ENTRYPOINT (and drops CMD); args replaces CMD.
    let (exe, mut args): (String, Vec<String>) = match (&container.command, &container.args) {
        (Some(command), args) => {
            let (first, rest) = command.split_first().ok_or("empty command")?;
            let mut a = rest.to_vec();
            a.extend(args.iter().flatten().cloned());
            (first.clone(), a)
        }
        (None, args) => {
            let (first, rest) = entrypoint
                .split_first()
                .ok_or_else(|| format!("stage {stage} has no ENTRYPOINT"))?;
            let mut a = rest.to_vec();
            a.extend(args.clone().unwrap_or_else(|| cmd.clone()));
            (first.clone(), a)
        }
    };
    args = args.iter().map(|a| expand(a, &env)).collect();

    let volume_dirs = volumes(client, pod, ip, dir).await?;
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        if m.sub_path.is_some() || m.sub_path_expr.is_some() {
            return Err(format!("volumeMount {}: subPath is not emulated", m.name));
        }
        let src = volume_dirs
            .get(&m.name)
            .ok_or_else(|| format!("volumeMount {}: no such volume", m.name))?;
        mounts.push((src.clone(), m.mount_path.clone()));
    }

    let pod_sc = spec.security_context.as_ref();
    let sc = container.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group));
    let user = uid.map(|u| (u, gid.unwrap_or(u)));
    let read_only_root = sc.and_then(|s| s.read_only_root_filesystem) == Some(true);

    let readiness = match &container.readiness_probe {
        None => None,
        Some(p) => {
            let get = p
                .http_get
                .as_ref()
                .ok_or("only httpGet readiness probes are emulated")?;
            if get.scheme.as_deref().is_some_and(|s| s != "HTTP") {
                return Err("only HTTP readiness probes are emulated".into());
            }
            let secs = |v: Option<i32>, default: u64| {
                Duration::from_secs(v.and_then(|n| u64::try_from(n).ok()).unwrap_or(default))
            };
            Some(Probe {
                port: port(container, &get.port)?,
                path: get.path.clone().unwrap_or_else(|| "/".into()),
                initial_delay: secs(p.initial_delay_seconds, 0),
                period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
                failure_threshold: p
                    .failure_threshold
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(3),
            })
        }
    };
    Ok(Launch {
        program: local_binary(&exe)?,
        args,
        env,
        mounts,
        user,
        read_only_root,
        readiness,
    })
}

/// Single-quoted for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Launch {
    /// The process, started in network namespace `netns` and a mount namespace of its own where
    /// `/run` is a fresh tmpfs, each volume is bind-mounted at its `mountPath` and, with
    /// `readOnlyRootFilesystem`, the rest is read-only; then, as its `securityContext` user, the
    /// binary itself (`exec`: the child's pid is the binary's).
    pub(crate) fn spawn(&self, netns: &str, log: &Path) -> std::io::Result<std::process::Child> {
        let mut script = String::from("set -e\nmount -t tmpfs -o mode=0755 tmpfs /run\n");
        for (src, target) in &self.mounts {
            let _ = writeln!(
                script,
                "mkdir -p {t}\nmount --bind {s} {t}",
                t = quote(target),
                s = quote(&src.display().to_string())
            );
        }
        if self.read_only_root {
            // Each volume is a mount of its own and keeps its flags.
            script.push_str("mount -o remount,bind,ro /run\nmount -o remount,bind,ro /\n");
        }
        match self.user {
            Some((uid, gid)) => {
                let _ = write!(
                    script,
                    "exec setpriv --reuid={uid} --regid={gid} --clear-groups -- \"$@\""
                );
            }
            None => script.push_str("exec \"$@\""),
        }
        let file = std::fs::File::create(log)?;
        Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
            ])
            .args(["/bin/sh", "-c", &script, "pod"])
            .arg(&self.program)
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_the_kubelet() {
        let env = vec![("A".to_owned(), "x".to_owned())];
        assert_eq!(expand("--a=$(A)", &env), "--a=x");
        assert_eq!(expand("$$(A) $(B) $", &env), "$(A) $(B) $");
    }

    #[test]
    fn the_dockerfile_names_both_images() {
        let stages = dockerfile_stages();
        assert_eq!(stages["ws-metrics-adapter"].0, ["/ws-metrics-adapter"]);
        assert_eq!(stages["ws-demo"].0, ["/ws-demo"]);
    }
}
