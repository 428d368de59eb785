//! The Kubernetes manifests: each one deserialises strictly into its `k8s-openapi`
//! type (a round trip that would drop an unknown or misspelt field fails), and the
//! pieces fit together: ports, probe paths, the config mount, grace period vs drain.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::support::BIN;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Parse `file` as `T`, and fail if serialising `T` back loses anything the YAML had.
fn strict<T: DeserializeOwned + Serialize>(file: &str) -> T {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    let raw: serde_json::Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let typed: T = serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        back, raw,
        "{file}: a field was dropped or rewritten (unknown or misspelt?)"
    );
    typed
}

fn kustomization() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("kustomization.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

#[test]
fn every_manifest_is_listed_and_parses_strictly() {
    let k = kustomization();
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        [
            "deployment.yaml",
            "service.yaml",
            "hpa.yaml",
            "pdb.yaml",
            "networkpolicy.yaml"
        ]
    );
    strict::<Deployment>("deployment.yaml");
    strict::<Service>("service.yaml");
    strict::<HorizontalPodAutoscaler>("hpa.yaml");
    strict::<PodDisruptionBudget>("pdb.yaml");
    strict::<NetworkPolicy>("networkpolicy.yaml");
}

#[test]
fn the_pieces_fit_together() {
    let d: Deployment = strict("deployment.yaml");
    let spec = d.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert!(spec.replicas.unwrap() >= 3);

    // The config: --config points into the ConfigMap directory mount (no subPath, so
    // updates reach the pod), and the ConfigMap comes from the kustomize generator.
    let args = c.args.clone().unwrap();
    let config_path =
        Path::new(&args[args.iter().position(|a| a == "--config").unwrap() + 1]).to_path_buf();
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "routes")
        .unwrap();
    assert_eq!(config_path.parent().unwrap(), Path::new(&mount.mount_path));
    assert!(
        mount.sub_path.is_none(),
        "a subPath mount never sees ConfigMap updates"
    );
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "routes")
        .unwrap();
    let cm_name = volume.config_map.as_ref().unwrap().name.clone();
    let k = kustomization();
    let generator = &k["configMapGenerator"][0];
    assert_eq!(generator["name"], cm_name.as_str());
    assert_eq!(
        generator["files"][0],
        config_path.file_name().unwrap().to_str().unwrap()
    );
    assert_eq!(k["generatorOptions"]["disableNameSuffixHash"], true);

    // The embedded table passes `switchyard check --strict`, and its ports are the
    // container's ports.
    let out = Command::new(BIN)
        .args(["check", "--strict", "routes.toml"])
        .current_dir(dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let table: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir().join("routes.toml")).unwrap()).unwrap();
    let port_of = |key: &str| -> i32 {
        let addr: std::net::SocketAddr = table["listen"][key].as_str().unwrap().parse().unwrap();
        assert!(
            addr.ip().is_unspecified(),
            "{key} must listen on all interfaces in a pod"
        );
        i32::from(addr.port())
    };
    let ports = c.ports.clone().unwrap();
    let container_port = |name: &str| {
        ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap()
            .container_port
    };
    assert_eq!(container_port("http"), port_of("http"));
    assert_eq!(container_port("admin"), port_of("admin"));

    // Probes hit admin endpoints that exist.
    let openapi: serde_json::Value =
        serde_json::from_str(include_str!("../../src/admin/openapi.json")).unwrap();
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("admin".into()));
        assert!(openapi["paths"].get(path).is_some());
    }

    // Grace period covers preStop and the drain.
    let drain = switchyard::config::validate::parse_duration(
        table["server"]["drain_timeout"].as_str().unwrap(),
    )
    .unwrap()
    .as_secs() as i64;
    let pre_stop = c
        .lifecycle
        .as_ref()
        .unwrap()
        .pre_stop
        .as_ref()
        .unwrap()
        .sleep
        .as_ref()
        .unwrap()
        .seconds;
    assert!(pod.termination_grace_period_seconds.unwrap() > drain + pre_stop);

    // Locked down.
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let res = c.resources.as_ref().unwrap();
    assert!(res.requests.is_some() && res.limits.is_some());

    // Service, HPA, PDB and NetworkPolicy point at these pods and ports.
    let svc: Service = strict("service.yaml");
    let svc_spec = svc.spec.unwrap();
    for (k, v) in svc_spec.selector.unwrap() {
        assert_eq!(labels.get(&k), Some(&v));
    }
    for p in svc_spec.ports.unwrap() {
        let IntOrString::String(name) = p.target_port.unwrap() else {
            panic!("use named target ports")
        };
        assert_ne!(
            name, "admin",
            "the admin port is never exposed by the Service"
        );
        container_port(&name);
    }
    let hpa: HorizontalPodAutoscaler = strict("hpa.yaml");
    let hpa_spec = hpa.spec.unwrap();
    assert_eq!(
        hpa_spec.scale_target_ref.name,
        d.metadata.name.clone().unwrap()
    );
    assert!(hpa_spec.min_replicas.unwrap() >= 3);
    let pdb: PodDisruptionBudget = strict("pdb.yaml");
    for (k, v) in pdb.spec.unwrap().selector.unwrap().match_labels.unwrap() {
        assert_eq!(labels.get(&k), Some(&v));
    }
    let np: NetworkPolicy = strict("networkpolicy.yaml");
    let np_spec = np.spec.unwrap();
    for (k, v) in np_spec.pod_selector.unwrap().match_labels.unwrap() {
        assert_eq!(labels.get(&k), Some(&v));
    }
    let admin_rule = np_spec
        .ingress
        .unwrap()
        .into_iter()
        .find(|r| {
            r.ports
                .iter()
                .flatten()
                .any(|p| p.port == Some(IntOrString::String("admin".into())))
        })
        .expect("a rule for the admin port");
    assert!(
        admin_rule.from.is_some_and(|f| !f.is_empty()),
        "the admin port must not be open to everyone"
    );
}
