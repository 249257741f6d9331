//! What a pod says about the workload it runs: its owner (the Deployment behind a ReplicaSet,
//! the CronJob behind a Job, derived from names alone) and the `service.*` names, with the
//! precedence of the OpenTelemetry conventions for Kubernetes.
use std::collections::BTreeMap;

/// Pod annotations with this prefix become resource attributes (the prefix dropped).
pub const RESOURCE_ANNOTATION_PREFIX: &str = "resource.opentelemetry.io/";
const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
const LABEL_NAME: &str = "app.kubernetes.io/name";
const LABEL_VERSION: &str = "app.kubernetes.io/version";
/// The label the Deployment controller puts on its pods: the suffix of the ReplicaSet's name.
const LABEL_POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// A CronJob's Jobs are named `<cronjob>-<scheduled time in minutes since the epoch>`: at
/// least this many digits today (and for the next 150 years).
const MIN_CRONJOB_SUFFIX_DIGITS: usize = 8;

/// The workload a pod belongs to, from its controller owner reference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub replicaset: Option<String>,
    pub deployment: Option<String>,
    pub statefulset: Option<String>,
    pub daemonset: Option<String>,
    pub job: Option<String>,
    pub cronjob: Option<String>,
}

impl Owner {
    /// From the controller owner reference (`kind`, `name`) and the pod's labels. A
    /// ReplicaSet named `<x>-<pod-template-hash>` is a Deployment's: `x` (no API call); a
    /// Job named `<x>-<digits>` is a CronJob's: `x`.
    pub fn from_reference(kind: &str, name: &str, labels: &BTreeMap<String, String>) -> Self {
        let name = name.to_owned();
        match kind {
            "ReplicaSet" => Self {
                deployment: labels
                    .get(LABEL_POD_TEMPLATE_HASH)
                    .and_then(|hash| strip_suffix(&name, hash))
                    .map(str::to_owned),
                replicaset: Some(name),
                ..Self::default()
            },
            "StatefulSet" => Self {
                statefulset: Some(name),
                ..Self::default()
            },
            "DaemonSet" => Self {
                daemonset: Some(name),
                ..Self::default()
            },
            "Job" => Self {
                cronjob: cronjob_of(&name).map(str::to_owned),
                job: Some(name),
                ..Self::default()
            },
            _ => Self::default(),
        }
    }

    /// The top-level workload's name: what `service.name` falls back to.
    pub fn workload_name(&self) -> Option<&str> {
        [
            &self.deployment,
            &self.replicaset,
            &self.statefulset,
            &self.daemonset,
            &self.cronjob,
            &self.job,
        ]
        .into_iter()
        .find_map(|n| n.as_deref())
    }

    /// `k8s.*.name` attributes, in a fixed order.
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("k8s.replicaset.name", &self.replicaset),
            ("k8s.deployment.name", &self.deployment),
            ("k8s.statefulset.name", &self.statefulset),
            ("k8s.daemonset.name", &self.daemonset),
            ("k8s.job.name", &self.job),
            ("k8s.cronjob.name", &self.cronjob),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

/// `name` without `-suffix`, when it ends so and something is left.
fn strip_suffix<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    name.strip_suffix(suffix)?
        .strip_suffix('-')
        .filter(|s| !s.is_empty())
}

fn cronjob_of(job: &str) -> Option<&str> {
    let (prefix, digits) = job.rsplit_once('-')?;
    (!prefix.is_empty()
        && digits.len() >= MIN_CRONJOB_SUFFIX_DIGITS
        && digits.bytes().all(|b| b.is_ascii_digit()))
    .then_some(prefix)
}

/// The `service.*` names a pod gives its processes (those whose environment names none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceNames {
    pub name: String,
    pub namespace: String,
    pub version: Option<String>,
}

/// `service.name`: the annotation `resource.opentelemetry.io/service.name`, the labels
/// `app.kubernetes.io/instance` then `app.kubernetes.io/name`, the owner's workload name, the
/// pod's name (the container's own `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, which
/// come first, are the caller's). `service.namespace`: the annotation, then the Kubernetes
/// namespace. `service.version`: the annotation, then `app.kubernetes.io/version`.
pub fn service_names(
    pod_name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    owner: &Owner,
) -> ServiceNames {
    let annotation = |key: &str| {
        annotations
            .get(&format!("{RESOURCE_ANNOTATION_PREFIX}{key}"))
            .and_then(|v| non_empty(v))
    };
    let label = |key: &str| labels.get(key).and_then(|v| non_empty(v));
    let name = annotation("service.name")
        .or_else(|| label(LABEL_INSTANCE))
        .or_else(|| label(LABEL_NAME))
        .or_else(|| owner.workload_name())
        .unwrap_or(pod_name);
    ServiceNames {
        name: name.to_owned(),
        namespace: annotation("service.namespace")
            .unwrap_or(namespace)
            .to_owned(),
        version: annotation("service.version")
            .or_else(|| label(LABEL_VERSION))
            .map(str::to_owned),
    }
}

/// The `resource.opentelemetry.io/<key>` annotations other than the `service.*` names
/// [`service_names`] decides, as (`key`, value).
pub fn annotation_attributes(annotations: &BTreeMap<String, String>) -> Vec<(String, String)> {
    annotations
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(RESOURCE_ANNOTATION_PREFIX)?, v)))
        .filter(|(k, _)| {
            !k.is_empty() && !matches!(*k, "service.name" | "service.namespace" | "service.version")
        })
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn owners_from_references() {
        let hash = map(&[("pod-template-hash", "7d4b9c8f6")]);
        let cases: &[(&str, &str, &BTreeMap<String, String>, Owner)] = &[
            (
                "ReplicaSet",
                "checkout-7d4b9c8f6",
                &hash,
                Owner {
                    replicaset: Some("checkout-7d4b9c8f6".into()),
                    deployment: Some("checkout".into()),
                    ..Owner::default()
                },
            ),
            // A ReplicaSet without the Deployment's hash label is its own workload.
            (
                "ReplicaSet",
                "standalone",
                &BTreeMap::new(),
                Owner {
                    replicaset: Some("standalone".into()),
                    ..Owner::default()
                },
            ),
            // The hash is not the name's suffix: no Deployment guessed.
            (
                "ReplicaSet",
                "other-abc",
                &hash,
                Owner {
                    replicaset: Some("other-abc".into()),
                    ..Owner::default()
                },
            ),
            (
                "StatefulSet",
                "db",
                &BTreeMap::new(),
                Owner {
                    statefulset: Some("db".into()),
                    ..Owner::default()
                },
            ),
            (
                "DaemonSet",
                "agent",
                &BTreeMap::new(),
                Owner {
                    daemonset: Some("agent".into()),
                    ..Owner::default()
                },
            ),
            (
                "Job",
                "backup-29412345",
                &BTreeMap::new(),
                Owner {
                    job: Some("backup-29412345".into()),
                    cronjob: Some("backup".into()),
                    ..Owner::default()
                },
            ),
            // Short or non-numeric suffixes are plain Jobs.
            (
                "Job",
                "migrate-42",
                &BTreeMap::new(),
                Owner {
                    job: Some("migrate-42".into()),
                    ..Owner::default()
                },
            ),
            (
                "Job",
                "migrate-v2x45678",
                &BTreeMap::new(),
                Owner {
                    job: Some("migrate-v2x45678".into()),
                    ..Owner::default()
                },
            ),
            ("Node", "n1", &BTreeMap::new(), Owner::default()),
        ];
        for (kind, name, labels, want) in cases {
            assert_eq!(
                &Owner::from_reference(kind, name, labels),
                want,
                "{kind} {name}"
            );
        }
        let o = Owner::from_reference("ReplicaSet", "checkout-7d4b9c8f6", &hash);
        assert_eq!(o.workload_name(), Some("checkout"));
        assert_eq!(
            o.attributes().collect::<Vec<_>>(),
            vec![
                ("k8s.replicaset.name", "checkout-7d4b9c8f6"),
                ("k8s.deployment.name", "checkout")
            ]
        );
        let o = Owner::from_reference("Job", "backup-29412345", &BTreeMap::new());
        assert_eq!(o.workload_name(), Some("backup"));
    }

    #[test]
    fn service_name_precedence() {
        let deployment = Owner {
            replicaset: Some("web-5f6d".into()),
            deployment: Some("web".into()),
            ..Owner::default()
        };
        let ann = "resource.opentelemetry.io/service.name";
        // (annotations, labels, owner, expected service.name): first match wins.
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Pairs<'_>, Pairs<'_>, &Owner, &str)] = &[
            (
                &[(ann, "from-annotation")],
                &[(LABEL_INSTANCE, "i"), (LABEL_NAME, "n")],
                &deployment,
                "from-annotation",
            ),
            (
                &[(ann, "  ")],
                &[(LABEL_INSTANCE, "from-instance"), (LABEL_NAME, "n")],
                &deployment,
                "from-instance",
            ),
            (&[], &[(LABEL_NAME, "from-name")], &deployment, "from-name"),
            (&[], &[(LABEL_INSTANCE, "")], &deployment, "web"),
            (&[], &[], &Owner::default(), "web-5f6d-x2x9k"),
        ];
        for (annotations, labels, owner, want) in cases {
            let names = service_names(
                "web-5f6d-x2x9k",
                "shop",
                &map(labels),
                &map(annotations),
                owner,
            );
            assert_eq!(names.name, *want, "{annotations:?} {labels:?}");
            assert_eq!(names.namespace, "shop");
            assert_eq!(names.version, None);
        }
    }

    #[test]
    fn namespace_and_version_precedence() {
        let names = service_names(
            "p",
            "shop",
            &map(&[(LABEL_VERSION, "1.2.3")]),
            &BTreeMap::new(),
            &Owner::default(),
        );
        assert_eq!(
            (names.namespace.as_str(), names.version.as_deref()),
            ("shop", Some("1.2.3"))
        );
        let names = service_names(
            "p",
            "shop",
            &map(&[(LABEL_VERSION, "1.2.3")]),
            &map(&[
                ("resource.opentelemetry.io/service.namespace", "retail"),
                ("resource.opentelemetry.io/service.version", "2.0"),
            ]),
            &Owner::default(),
        );
        assert_eq!(
            (names.namespace.as_str(), names.version.as_deref()),
            ("retail", Some("2.0"))
        );
    }

    #[test]
    fn other_resource_annotations_become_attributes() {
        let attrs = annotation_attributes(&map(&[
            ("resource.opentelemetry.io/service.name", "x"),
            ("resource.opentelemetry.io/service.version", "x"),
            (
                "resource.opentelemetry.io/deployment.environment.name",
                "prod",
            ),
            ("resource.opentelemetry.io/team", "payments"),
            ("resource.opentelemetry.io/", "empty key"),
            ("prometheus.io/scrape", "true"),
        ]));
        assert_eq!(
            attrs,
            vec![
                ("deployment.environment.name".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "payments".to_owned()),
            ]
        );
    }
}
