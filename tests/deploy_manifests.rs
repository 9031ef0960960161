//! The deployment manifests in `deploy/`, checked offline (no cluster is reachable here): every
//! Kubernetes manifest and Nomad spec parses, and the names and sockets in them agree with what
//! the daemon does with the environment they give it (its config is resolved from that very
//! environment).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rexray::config::{CsiMode, ModuleKind};
use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(rel)
}

/// Every YAML document of every file under `deploy/kubernetes`, by file.
fn kubernetes() -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(deploy("kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        for doc in &docs {
            for key in ["apiVersion", "kind", "metadata"] {
                assert!(doc.get(key).is_some(), "{}: a document without {key}: {doc}", path.display());
            }
        }
        out.insert(path.file_name().unwrap().to_string_lossy().into_owned(), docs);
    }
    out
}

fn of_kind<'a>(all: &'a BTreeMap<String, Vec<Value>>, kind: &str) -> Vec<&'a Value> {
    all.values().flatten().filter(|d| d["kind"] == kind).collect()
}

/// The daemon's config with `env` (as a container gets it) and no file.
fn daemon_config(env: &[(&str, &str)]) -> rexray::config::Config {
    let env: BTreeMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    rexray::config::parse("", None, &env).unwrap_or_else(|e| panic!("the daemon refuses {env:?}: {e}"))
}

/// The CSI module the daemon serves with a container's `env`: (driver, mode, socket).
fn served(env: &[(&str, &str)]) -> (String, CsiMode, PathBuf) {
    let config = daemon_config(env);
    assert_eq!(config.modules.len(), 1, "{:?}", config.modules);
    let module = &config.modules[0];
    let ModuleKind::Csi(csi) = &module.kind else { panic!("not a CSI module: {module:?}") };
    (csi.driver.clone(), csi.mode, module.socket.clone())
}

/// The env entries of a container, as pairs.
fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .map(|env| {
            env.iter().filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned()))).collect()
        })
        .unwrap_or_default()
}

fn containers(workload: &Value) -> &Vec<Value> {
    workload["spec"]["template"]["spec"]["containers"].as_array().unwrap()
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The mount path of volume `name` in `container`.
fn mount_path(container: &Value, name: &str) -> Option<String> {
    container["volumeMounts"].as_array()?.iter().find(|m| m["name"] == name)?["mountPath"].as_str().map(str::to_owned)
}

#[test]
fn kubernetes_manifests_parse_and_agree_with_the_daemon() {
    let all = kubernetes();
    let driver = of_kind(&all, "CSIDriver")[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let deployments = of_kind(&all, "Deployment");
    let daemonsets = of_kind(&all, "DaemonSet");
    assert_eq!((deployments.len(), daemonsets.len()), (1, 1));
    for (workload, mode) in [(deployments[0], CsiMode::Controller), (daemonsets[0], CsiMode::Node)] {
        let name = workload["metadata"]["name"].as_str().unwrap();
        let rexray = containers(workload).iter().find(|c| c["name"] == "rexray").unwrap();
        let env = env_of(rexray);
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (served_driver, served_mode, socket) = served(&pairs);
        assert_eq!(served_driver, driver, "{name}: the daemon's driver name vs the CSIDriver");
        assert_eq!(served_mode, mode, "{name}: CSI_MODE");
        let socket_dir = socket.parent().unwrap().display().to_string();
        let socket_volume = rexray["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == socket_dir.as_str())
            .unwrap_or_else(|| panic!("{name}: the socket's directory {socket_dir} is not a volume"))["name"]
            .as_str()
            .unwrap()
            .to_owned();
        // Every sidecar dials the daemon's socket through the same volume.
        for sidecar in containers(workload).iter().filter(|c| c["name"] != "rexray") {
            let sidecar_name = sidecar["name"].as_str().unwrap();
            let dir = mount_path(sidecar, &socket_volume)
                .unwrap_or_else(|| panic!("{name}/{sidecar_name} does not mount {socket_volume}"));
            let address = format!("--csi-address={dir}/{}", socket.file_name().unwrap().to_string_lossy());
            assert!(args(sidecar).contains(&address), "{name}/{sidecar_name}: {:?} lacks {address}", args(sidecar));
        }
        assert!(rexray["livenessProbe"].is_object(), "{name}: no liveness probe");
    }
    let node = daemonsets[0];
    let rexray = containers(node).iter().find(|c| c["name"] == "rexray").unwrap();
    assert_eq!(rexray["securityContext"]["privileged"], true, "the node plugin mounts");
    let kubelet =
        rexray["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == "/var/lib/kubelet").unwrap();
    assert_eq!(kubelet["mountPropagation"], "Bidirectional");
    let registrar = containers(node).iter().find(|c| c["name"] == "node-driver-registrar").unwrap();
    let registration = format!("--kubelet-registration-path=/var/lib/kubelet/plugins/{driver}/csi.sock");
    assert!(args(registrar).contains(&registration), "{:?}", args(registrar));
    let volumes = node["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let plugin_dir = volumes.iter().find(|v| v["name"] == "plugin-dir").unwrap();
    assert_eq!(plugin_dir["hostPath"]["path"], format!("/var/lib/kubelet/plugins/{driver}").as_str());
    // The kubelet dials the socket the daemon serves by default, at the registration path.
    let default = daemon_config(&[
        ("LIBSTORAGE_SERVICE", "ebs"),
        ("CSI_ENDPOINT", &format!("unix:///var/lib/kubelet/plugins/{driver}/csi.sock")),
    ]);
    assert_eq!(default.modules[0].socket, Path::new(&format!("/var/lib/kubelet/plugins/{driver}/csi.sock")));

    for class in of_kind(&all, "StorageClass") {
        assert_eq!(class["provisioner"], driver.as_str());
    }
    for class in of_kind(&all, "VolumeSnapshotClass") {
        assert_eq!(class["driver"], driver.as_str());
    }
    // The service accounts the workloads run as exist.
    let accounts: Vec<&str> =
        of_kind(&all, "ServiceAccount").iter().filter_map(|a| a["metadata"]["name"].as_str()).collect();
    for workload in deployments.iter().chain(&daemonsets) {
        let account = workload["spec"]["template"]["spec"]["serviceAccountName"].as_str().unwrap();
        assert!(accounts.contains(&account), "{account} is not defined: {accounts:?}");
    }
}

/// A Nomad HCL file as JSON.
fn nomad(file: &str) -> Value {
    let text = std::fs::read_to_string(deploy(&format!("nomad/{file}"))).unwrap();
    hcl::from_str(&text).unwrap_or_else(|e| panic!("deploy/nomad/{file} does not parse: {e}"))
}

/// The one task of a Nomad job spec.
fn task(job: &Value) -> &Value {
    let job = job["job"].as_object().unwrap().values().next().unwrap();
    let group = job["group"].as_object().unwrap().values().next().unwrap();
    group["task"].as_object().unwrap().values().next().unwrap()
}

#[test]
fn nomad_specs_parse_and_agree_with_the_daemon() {
    let volume = nomad("volume.hcl");
    let mut driver = None;
    for (file, mode) in [("controller.nomad.hcl", CsiMode::Controller), ("node.nomad.hcl", CsiMode::Node)] {
        let job = nomad(file);
        let task = task(&job);
        let env: Vec<(String, String)> =
            task["env"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (served_driver, served_mode, socket) = served(&pairs);
        let plugin = &task["csi_plugin"];
        assert_eq!(plugin["id"], served_driver.as_str(), "{file}: csi_plugin.id vs the daemon's driver name");
        assert_eq!(plugin["type"], mode.as_str(), "{file}: csi_plugin.type");
        assert_eq!(served_mode, mode, "{file}: CSI_MODE");
        assert_eq!(
            socket,
            Path::new(plugin["mount_dir"].as_str().unwrap()).join("csi.sock"),
            "{file}: Nomad dials <mount_dir>/csi.sock"
        );
        driver = Some(served_driver);
    }
    assert_eq!(volume["plugin_id"], driver.unwrap().as_str());
    assert_eq!(volume["type"], "csi");
}
