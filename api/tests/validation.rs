//! Every CRD generates, is structural and small enough for client-side apply; the table of invalid objects
//! is rejected (CEL rules evaluated locally by kube's CEL engine, schema checks by a small structural
//! validator), each error naming its field; the valid objects pass; defaults are what the docs say.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::Validator;
use serde_json::Value;
use tabby_api::crds;
use tabby_api::policy::{self as p, model};
use tabby_testkit::cases::{ValidationCase as Case, load};

fn cases(file: &str) -> Vec<Case> {
    load(file)
}

/// Tabby's CRDs and the ClusterNetworkPolicy CRD the operator installs when absent.
fn every_crd() -> Vec<CustomResourceDefinition> {
    let mut all = crds::all();
    all.push(crds::cluster_network_policy());
    all
}

fn schemas() -> BTreeMap<String, Value> {
    every_crd()
        .into_iter()
        .map(|crd| {
            let schema = crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
            (crd.spec.names.kind.clone(), serde_json::to_value(schema).unwrap())
        })
        .collect()
}

/// The checks the API server makes from the OpenAPI schema itself (not CEL): types, enums, ranges,
/// lengths and required fields. Returns `path: message` for each violation.
fn schema_errors(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let at = |p: &str| if p.is_empty() { "<root>".to_string() } else { p.to_string() };
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            out.push(format!("{}: must not be null", at(path)));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        let ok = match ty {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !ok {
            out.push(format!("{}: must be of type {ty}", at(path)));
            return;
        }
    } else if int_or_string && !(value.is_string() || value.is_i64()) {
        out.push(format!("{}: must be an integer or a string", at(path)));
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        out.push(format!("{}: unsupported value {value}, supported: {options:?}", at(path)));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            out.push(format!("{}: must be greater than or equal to {min}", at(path)));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            out.push(format!("{}: must be less than or equal to {max}", at(path)));
        }
        if schema.get("format").and_then(Value::as_str) == Some("int32") && (n < i32::MIN as f64 || n > i32::MAX as f64)
        {
            out.push(format!("{}: out of int32 range", at(path)));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if schema.get("maxLength").and_then(Value::as_u64).is_some_and(|m| len > m) {
            out.push(format!("{}: too long", at(path)));
        }
        if schema.get("minLength").and_then(Value::as_u64).is_some_and(|m| len < m) {
            out.push(format!("{}: too short", at(path)));
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str)
            && !regex::Regex::new(p).expect("the schema's pattern compiles").is_match(s)
        {
            out.push(format!("{}: should match '{p}'", at(path)));
        }
    }
    if let Some(items) = value.as_array() {
        let n = items.len() as u64;
        if schema.get("maxItems").and_then(Value::as_u64).is_some_and(|m| n > m) {
            out.push(format!("{}: must have at most {} items", at(path), schema["maxItems"]));
        }
        if schema.get("minItems").and_then(Value::as_u64).is_some_and(|m| n < m) {
            out.push(format!("{}: must have at least {} items", at(path), schema["minItems"]));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                schema_errors(item_schema, item, &format!("{path}[{i}]"), out);
            }
        }
    }
    if let Some(map) = value.as_object() {
        let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
        for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let key = required.as_str().unwrap_or_default();
            if !map.contains_key(key) {
                out.push(format!("{}: Required value", join(key)));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (key, child) in map {
            if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
                schema_errors(child_schema, child, &join(key), out);
            } else if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                schema_errors(additional, child, &join(key), out);
            }
        }
    }
}

/// Everything the API server would say about `object` (replacing `old`, if any).
fn errors(schemas: &BTreeMap<String, Value>, object: &Value, old: Option<&Value>) -> Vec<String> {
    let kind = object["kind"].as_str().expect("case has a kind");
    let schema = schemas.get(kind).unwrap_or_else(|| panic!("no CRD of kind {kind}"));
    let mut out = Vec::new();
    schema_errors(schema, object, "", &mut out);
    if let Err(cel) = Validator::new().validate(schema, object, old) {
        // A rule on the root object (the singleton name rules) has no field path; its message names the field.
        out.extend(cel.iter().map(|e| {
            if e.field_path.is_empty() { e.message.clone() } else { format!("{}: {}", e.field_path, e.message) }
        }));
    }
    out
}

#[test]
fn every_crd_generates_and_is_structural() {
    assert_eq!(crds::all().len(), 17);
    let all = every_crd();
    for crd in &all {
        let json = serde_json::to_string(crd).unwrap();
        // Client-side `kubectl apply` stores the whole object in an annotation limited to 262144 bytes.
        assert!(json.len() < 262_144 / 2, "{} is {} bytes", crd.metadata.name.as_deref().unwrap(), json.len());
        // Every version served, one stored (ClusterNetworkPolicy serves two with one schema).
        assert!(crd.spec.versions.iter().all(|v| v.served));
        assert_eq!(crd.spec.versions.iter().filter(|v| v.storage).count(), 1);
        for version in &crd.spec.versions {
            let schema =
                serde_json::to_value(version.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap();
            assert_structural(&schema, "");
        }
        let namespaced = ["NetworkPolicy", "StagedNetworkPolicy", "NetworkSet"].contains(&crd.spec.names.kind.as_str());
        let scope = if namespaced { "Namespaced" } else { "Cluster" };
        assert_eq!(crd.spec.scope, scope, "{} should be {scope}", crd.spec.names.kind);
    }
}

/// A structural schema has a type at every level (or int-or-string / preserve-unknown-fields), and no
/// `$ref`, `anyOf`/`oneOf` with types, or `additionalProperties` beside `properties`.
fn assert_structural(schema: &Value, path: &str) {
    let has_type = schema.get("type").is_some()
        || schema.get("x-kubernetes-int-or-string").is_some()
        || schema.get("x-kubernetes-preserve-unknown-fields").is_some();
    assert!(has_type, "{path}: no type");
    assert!(schema.get("$ref").is_none(), "{path}: $ref");
    assert!(
        !(schema.get("properties").is_some() && schema.get("additionalProperties").is_some()),
        "{path}: properties and additionalProperties"
    );
    for key in ["anyOf", "oneOf", "allOf"] {
        for branch in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            assert!(branch.get("type").is_none(), "{path}: {key} branch with a type");
        }
    }
    for (name, child) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
        assert!(child.get("description").is_some(), "{path}.{name}: no description for kubectl explain");
        assert_structural(child, &format!("{path}.{name}"));
    }
    if let Some(items) = schema.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        assert_structural(additional, &format!("{path}{{}}"));
    }
}

#[test]
fn invalid_objects_are_rejected_naming_their_field() {
    let schemas = schemas();
    let table = cases("invalid.yaml");
    assert!(table.len() >= 15, "the table must have at least 15 cases");
    let mut failures = Vec::new();
    for case in &table {
        let field = case.field.as_deref().expect("invalid case names its field");
        let errs = errors(&schemas, &case.object, case.old.as_ref());
        if !errs.iter().any(|e| e.starts_with(&format!("{field}:")) || e.starts_with(&format!("{field}["))) {
            failures.push(format!("{}: expected an error on {field}, got {errs:?}", case.name));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn valid_objects_are_accepted() {
    let schemas = schemas();
    let mut failures = Vec::new();
    for case in cases("valid.yaml") {
        let errs = errors(&schemas, &case.object, case.old.as_ref());
        if !errs.is_empty() {
            failures.push(format!("{}: {errs:?}", case.name));
        }
        // The same objects deserialize into the Rust types the components use.
        let kind = case.object["kind"].as_str().unwrap();
        let parsed = match kind {
            "Installation" => serde_json::from_value::<tabby_api::Installation>(case.object.clone()).map(|_| ()),
            "IPPool" => serde_json::from_value::<tabby_api::IPPool>(case.object.clone()).map(|_| ()),
            "IPAMConfig" => serde_json::from_value::<tabby_api::IPAMConfig>(case.object.clone()).map(|_| ()),
            "BGPConfiguration" => {
                serde_json::from_value::<tabby_api::BGPConfiguration>(case.object.clone()).map(|_| ())
            }
            "BGPPeer" => serde_json::from_value::<tabby_api::BGPPeer>(case.object.clone()).map(|_| ()),
            "NetworkPolicy" => policy_parses::<p::NetworkPolicy>(&case.object, |o| {
                let ns = o.metadata.namespace.clone().unwrap_or_default();
                model::from_tabby(model::Kind::Namespaced, Some(&ns), "t", &o.spec.fields).map(|_| ())
            }),
            "GlobalNetworkPolicy" => policy_parses::<p::GlobalNetworkPolicy>(&case.object, |o| {
                model::from_tabby(model::Kind::Global, None, "t", &o.spec.fields).map(|_| ())
            }),
            "StagedGlobalNetworkPolicy" => policy_parses::<p::StagedGlobalNetworkPolicy>(&case.object, |o| {
                model::from_tabby(model::Kind::StagedGlobal, None, "t", &o.spec.fields).map(|_| ())
            }),
            "Tier" => serde_json::from_value::<p::Tier>(case.object.clone()).map(|_| ()),
            "GlobalNetworkSet" => serde_json::from_value::<p::GlobalNetworkSet>(case.object.clone()).map(|_| ()),
            "NetworkSet" => serde_json::from_value::<p::NetworkSet>(case.object.clone()).map(|_| ()),
            "ClusterNetworkPolicy" => {
                policy_parses::<p::cnp::ClusterNetworkPolicy>(&case.object, |o| model::from_cnp(o).map(|_| ()))
            }
            other => panic!("add {other} to this match"),
        };
        if let Err(e) = parsed {
            failures.push(format!("{}: does not deserialize: {e}", case.name));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Deserializes a policy and normalises it with the model (a valid object must be programmable).
fn policy_parses<T: serde::de::DeserializeOwned>(
    v: &Value,
    normalise: impl Fn(&T) -> Result<(), model::Invalid>,
) -> Result<(), serde_json::Error> {
    let o: T = serde_json::from_value(v.clone())?;
    normalise(&o).map_err(|e| serde::de::Error::custom(format!("the model refuses it: {e}")))
}

fn schema_default(crd: &CustomResourceDefinition, field: &str) -> Value {
    let schema =
        serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap())
            .unwrap();
    schema["properties"]["spec"]["properties"][field]["default"].clone()
}

#[test]
fn defaults_match_calico() {
    use kube::CustomResourceExt;
    use serde_json::json;
    use tabby_api::{BGPConfiguration, IPAMConfig, IPPool};

    let bgp = BGPConfiguration::crd();
    assert_eq!(schema_default(&bgp, "asNumber"), json!(64512));
    assert_eq!(schema_default(&bgp, "nodeToNodeMeshEnabled"), json!(true));
    assert_eq!(schema_default(&bgp, "listenPort"), json!(179));
    assert_eq!(schema_default(&bgp, "logSeverityScreen"), json!("Info"));
    let ipam = IPAMConfig::crd();
    assert_eq!(schema_default(&ipam, "strictAffinity"), json!(false));
    assert_eq!(schema_default(&ipam, "autoAllocateBlocks"), json!(true));
    assert_eq!(schema_default(&ipam, "maxBlocksPerHost"), json!(0));
    let pool = IPPool::crd();
    assert_eq!(schema_default(&pool, "ipipMode"), json!("Never"));
    assert_eq!(schema_default(&pool, "vxlanMode"), json!("Never"));
    assert_eq!(schema_default(&pool, "nodeSelector"), json!("all()"));
    assert_eq!(schema_default(&pool, "natOutgoing"), json!(false));

    // Rust defaults agree with the schema's, and the block size follows the family.
    let spec: tabby_api::BGPConfigurationSpec = serde_json::from_value(json!({})).unwrap();
    assert_eq!(spec, tabby_api::BGPConfigurationSpec::default());
    let v4: tabby_api::IPPoolSpec = serde_json::from_value(json!({"cidr": "10.0.0.0/16"})).unwrap();
    assert_eq!(v4.effective_block_size(), 26);
    assert_eq!(v4.node_selector, "all()");
    let v6: tabby_api::IPPoolSpec = serde_json::from_value(json!({"cidr": "fd00::/48"})).unwrap();
    assert_eq!(v6.effective_block_size(), 122);
    let ipam: tabby_api::IPAMConfigSpec = serde_json::from_value(json!({})).unwrap();
    assert_eq!(ipam, tabby_api::IPAMConfigSpec::default());
}
