//! Conformance of documents to the vendored excerpts of ECS and OCSF in
//! `spec/`: each check returns every violation it finds, as text.
//!
//! Shared by the unit tests (`tests.rs`) and the privileged tests, which
//! check documents made from a real recording (`tests/privileged/formats.rs`
//! includes this file), so both hold documents to the same rules.

use std::sync::OnceLock;

use serde_json::{Map, Value};

fn spec(text: &'static str, cell: &'static OnceLock<Value>) -> &'static Value {
    cell.get_or_init(|| serde_json::from_str(text).expect("vendored spec is JSON"))
}

fn ecs_spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    spec(include_str!("spec/ecs-9.4.0.json"), &SPEC)
}

fn ocsf_spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    spec(include_str!("spec/ocsf-1.8.0.json"), &SPEC)
}

// ---------------------------------------------------------------- ECS ---

/// The leaves of a document as dotted names; arrays of scalars are leaves.
fn leaves<'a>(prefix: &str, value: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&name, child, out);
            }
        }
        _ => out.push((prefix.to_owned(), value)),
    }
}

fn ecs_type_matches(es_type: &str, value: &Value) -> bool {
    match es_type {
        "keyword" | "constant_keyword" | "wildcard" | "match_only_text" | "text" | "date"
        | "ip" | "version" => value.is_string(),
        "long" | "integer" | "short" | "byte" | "unsigned_long" => value.is_i64() || value.is_u64(),
        "float" | "double" | "half_float" | "scaled_float" => value.is_number(),
        "boolean" => value.is_boolean(),
        "object" | "flattened" | "nested" => value.is_object(),
        _ => false,
    }
}

/// Everything wrong with an ECS document, judged by the vendored field set.
pub fn ecs_violations(doc: &Value) -> Vec<String> {
    let spec = ecs_spec();
    let fields = spec["fields"].as_object().expect("fields");
    let mut errors = Vec::new();
    let mut flat = Vec::new();
    leaves("", doc, &mut flat);
    for (name, value) in &flat {
        if name.starts_with("link_trace.") {
            continue; // link-trace's own namespace, outside ECS
        }
        let Some(field) = fields.get(name) else {
            errors.push(format!("{name}: not an ECS {} field", spec["version"]));
            continue;
        };
        let es_type = field["type"].as_str().unwrap_or_default();
        let values: Vec<&Value> = match value {
            Value::Array(items) => {
                if field.get("array") != Some(&Value::Bool(true)) {
                    errors.push(format!(
                        "{name}: an array, but ECS does not normalize it to one"
                    ));
                }
                items.iter().collect()
            }
            single => vec![single],
        };
        for v in &values {
            if !ecs_type_matches(es_type, v) {
                errors.push(format!("{name}: {v} does not fit ECS type {es_type}"));
            }
            if let Some(allowed) = field.get("allowed_values").and_then(Value::as_object)
                && !v.as_str().is_some_and(|s| allowed.contains_key(s))
            {
                errors.push(format!("{name}: {v} is not an allowed value"));
            }
        }
    }
    for (name, field) in fields {
        if field.get("required") == Some(&Value::Bool(true))
            && !flat.iter().any(|(leaf, _)| leaf == name)
        {
            errors.push(format!("{name}: required by ECS, missing"));
        }
    }
    // Each event.type must be one its categories expect.
    let expected = &fields["event.category"]["allowed_values"];
    let types = doc["event"]["type"].as_array().cloned().unwrap_or_default();
    for category in doc["event"]["category"].as_array().into_iter().flatten() {
        let category = category.as_str().unwrap_or_default();
        for t in &types {
            let ok = expected[category]
                .as_array()
                .is_some_and(|allowed| allowed.contains(t));
            if !ok {
                errors.push(format!(
                    "event.type {t} is not expected for category {category}"
                ));
            }
        }
    }
    if doc["ecs"]["version"] != spec["version"] {
        errors.push(format!(
            "ecs.version {} is not {}",
            doc["ecs"]["version"], spec["version"]
        ));
    }
    let dataset = doc["event"]["dataset"].as_str().unwrap_or_default();
    let module = doc["event"]["module"].as_str().unwrap_or_default();
    if dataset.contains('-') || !dataset.starts_with(&format!("{module}.")) {
        errors.push(format!(
            "event.dataset {dataset}: `-` or not under the module {module}"
        ));
    }
    errors
}

// --------------------------------------------------------------- OCSF ---

struct OcsfCheck<'a> {
    spec: &'a Value,
    profiles: Vec<String>,
    errors: Vec<String>,
}

impl OcsfCheck<'_> {
    fn base_type<'t>(&'t self, data_type: &'t str) -> &'t str {
        match self.spec["types"][data_type].as_str() {
            Some(base) if base != data_type => base,
            _ => data_type,
        }
    }

    fn type_matches(&self, data_type: &str, value: &Value) -> bool {
        match self.base_type(data_type) {
            "string_t" => value.is_string(),
            "integer_t" | "long_t" => value.is_i64() || value.is_u64(),
            "float_t" => value.is_number(),
            "boolean_t" => value.is_boolean(),
            "object_t" => value.is_object(),
            "json_t" => true,
            _ => false,
        }
    }

    fn profile_in_use(&self, attribute: &Value) -> bool {
        match attribute.get("profiles").and_then(Value::as_array) {
            None => true,
            Some(profiles) => profiles
                .iter()
                .any(|p| self.profiles.iter().any(|used| p == used.as_str())),
        }
    }

    /// Checks `object` against `attributes` (an OCSF class or object) and
    /// its `constraints`, recursing into nested objects.
    fn object(
        &mut self,
        path: &str,
        object: &Map<String, Value>,
        attributes: &Value,
        constraints: &Value,
    ) {
        let Some(defined) = attributes.as_object() else {
            self.errors.push(format!("{path}: no attribute list"));
            return;
        };
        for (name, value) in object {
            let at = format!("{path}.{name}");
            let Some(attribute) = defined.get(name) else {
                self.errors.push(format!("{at}: not an attribute here"));
                continue;
            };
            if !self.profile_in_use(attribute) {
                self.errors.push(format!(
                    "{at}: belongs to profile {} not listed in metadata.profiles",
                    attribute["profiles"]
                ));
            }
            let values: Vec<&Value> = if attribute.get("array") == Some(&Value::Bool(true)) {
                match value.as_array() {
                    Some(items) => items.iter().collect(),
                    None => {
                        self.errors.push(format!("{at}: must be an array"));
                        continue;
                    }
                }
            } else {
                vec![value]
            };
            let data_type = attribute["type"].as_str().unwrap_or_default();
            for v in values {
                if !self.type_matches(data_type, v) {
                    self.errors.push(format!("{at}: {v} is not {data_type}"));
                    continue;
                }
                self.enum_value(&at, attribute, v, object);
                if data_type == "object_t" {
                    let object_type = attribute["object"].as_str().unwrap_or_default();
                    if object_type == "object" {
                        continue; // free-form (unmapped, xattributes)
                    }
                    let spec = &self.spec["objects"][object_type];
                    if spec.is_null() {
                        self.errors
                            .push(format!("{at}: object {object_type} not in the excerpt"));
                        continue;
                    }
                    if let Some(inner) = v.as_object() {
                        self.object(&at, inner, &spec["attributes"], &spec["constraints"]);
                    }
                }
            }
        }
        for (name, attribute) in defined {
            if attribute["requirement"] == "required"
                && self.profile_in_use(attribute)
                && !object.contains_key(name)
            {
                self.errors
                    .push(format!("{path}.{name}: required, missing"));
            }
        }
        if let Some(any_of) = constraints.get("at_least_one").and_then(Value::as_array)
            && !any_of
                .iter()
                .any(|n| n.as_str().is_some_and(|n| object.contains_key(n)))
        {
            self.errors
                .push(format!("{path}: needs at least one of {any_of:?}"));
        }
    }

    /// An enum value must be listed; a sibling caption must match it,
    /// except for 99 Other, whose caption the source defines.
    fn enum_value(
        &mut self,
        at: &str,
        attribute: &Value,
        value: &Value,
        object: &Map<String, Value>,
    ) {
        let Some(values) = attribute.get("enum") else {
            return;
        };
        let key = value.to_string();
        let caption = match values {
            Value::Array(ids) => {
                if !ids.contains(value) {
                    self.errors
                        .push(format!("{at}: {value} is not in its enum"));
                }
                return;
            }
            Value::Object(captions) => match captions.get(&key) {
                Some(caption) => caption,
                None => {
                    self.errors
                        .push(format!("{at}: {value} is not in its enum"));
                    return;
                }
            },
            _ => return,
        };
        if key == "99" {
            return;
        }
        if let Some(sibling) = attribute.get("sibling").and_then(Value::as_str)
            && let Some(text) = object.get(sibling)
            && text != caption
        {
            let caption = caption.as_str().unwrap_or_default();
            self.errors.push(format!(
                "{at}: {value} is {caption}, but {sibling} says {text}"
            ));
        }
    }
}

/// Everything wrong with an OCSF event, judged by the vendored schema.
pub fn ocsf_violations(doc: &Value) -> Vec<String> {
    let spec = ocsf_spec();
    let mut errors = Vec::new();
    let Some(object) = doc.as_object() else {
        return vec!["not an object".into()];
    };
    let class_uid = doc["class_uid"].as_u64();
    let Some((class_name, class)) = spec["classes"]
        .as_object()
        .into_iter()
        .flatten()
        .find(|(_, c)| c["uid"].as_u64() == class_uid)
    else {
        return vec![format!(
            "class_uid {:?} is not an excerpted class",
            doc["class_uid"]
        )];
    };
    let activity = doc["activity_id"].as_u64().unwrap_or(u64::MAX);
    if doc["type_uid"].as_u64() != class_uid.map(|c| c * 100 + activity) {
        errors.push(format!(
            "type_uid {} is not class_uid * 100 + activity_id",
            doc["type_uid"]
        ));
    }
    if doc["category_uid"] != class["category_uid"] {
        errors.push(format!(
            "category_uid {} is not {}'s",
            doc["category_uid"], class_name
        ));
    }
    if doc["class_name"] != class["caption"] || doc["category_name"] != class["category_name"] {
        errors.push(format!(
            "class_name/category_name are not {class_name}'s captions"
        ));
    }
    if doc["metadata"]["version"] != spec["version"] {
        errors.push(format!("metadata.version is not {}", spec["version"]));
    }
    let profiles: Vec<String> = doc["metadata"]["profiles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    for profile in &profiles {
        let known = &spec["profiles"][profile];
        if known.is_null() {
            errors.push(format!("profile {profile} is not an OCSF profile"));
        } else if let Some(extension) = known["extension"].as_str() {
            let declared = doc["metadata"]["extensions"]
                .as_array()
                .is_some_and(|list| list.iter().any(|e| e["name"] == extension));
            if !declared {
                errors.push(format!(
                    "profile {profile} needs extension {extension} in metadata.extensions"
                ));
            }
        }
    }
    let mut check = OcsfCheck {
        spec,
        profiles,
        errors,
    };
    check.object(class_name, object, &class["attributes"], &Value::Null);
    check.errors
}
