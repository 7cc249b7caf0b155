//! The contacts table: records by id. A write is planned first (the record
//! before and after, as its CDC event needs them) and applied only once its
//! event is published, so a reader never sees a change the stream lacks.
//! Pure: no I/O.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

pub(crate) type Fields = Map<String, Value>;

/// Debezium's operation codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
        }
    }
}

/// One write: the record (with its `"id"`) before and after.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Write {
    pub(crate) op: Op,
    pub(crate) id: String,
    pub(crate) before: Option<Value>,
    pub(crate) after: Option<Value>,
}

impl Write {
    /// False for an update that left the record as it was.
    pub(crate) fn changed(&self) -> bool {
        self.before != self.after
    }
}

/// Why a body cannot be a contact's fields.
#[derive(Debug, PartialEq, thiserror::Error)]
pub(crate) enum FieldsError {
    #[error("the body must be a JSON object of fields")]
    NotAnObject,
    #[error("\"id\" is assigned by System A and cannot be written")]
    Id,
}

/// The fields of a create or update body.
pub(crate) fn fields(body: Value) -> Result<Fields, FieldsError> {
    let Value::Object(fields) = body else {
        return Err(FieldsError::NotAnObject);
    };
    if fields.contains_key("id") {
        return Err(FieldsError::Id);
    }
    Ok(fields)
}

#[derive(Debug, Default)]
pub(crate) struct Contacts {
    records: BTreeMap<u64, Fields>,
    /// The last id given; ids are never reused, even after an undone create.
    last_id: u64,
}

impl Contacts {
    pub(crate) fn get(&self, id: &str) -> Option<Value> {
        let number = parse_id(id)?;
        self.records
            .get(&number)
            .map(|fields| record(number, fields))
    }

    /// Plans a create (a null field is no field); takes a new id.
    pub(crate) fn plan_create(&mut self, mut fields: Fields) -> Write {
        fields.retain(|_, value| !value.is_null());
        self.last_id += 1;
        Write {
            op: Op::Create,
            id: self.last_id.to_string(),
            before: None,
            after: Some(record(self.last_id, &fields)),
        }
    }

    /// Plans merging `patch` in (a null removes the field); `None` when missing.
    pub(crate) fn plan_update(&self, id: &str, patch: Fields) -> Option<Write> {
        let number = parse_id(id)?;
        let mut fields = self.records.get(&number)?.clone();
        let before = record(number, &fields);
        for (name, value) in patch {
            if value.is_null() {
                fields.remove(&name);
            } else {
                fields.insert(name, value);
            }
        }
        Some(Write {
            op: Op::Update,
            id: id.to_owned(),
            before: Some(before),
            after: Some(record(number, &fields)),
        })
    }

    pub(crate) fn plan_delete(&self, id: &str) -> Option<Write> {
        let number = parse_id(id)?;
        let fields = self.records.get(&number)?;
        Some(Write {
            op: Op::Delete,
            id: id.to_owned(),
            before: Some(record(number, fields)),
            after: None,
        })
    }

    /// Makes the record what `write` planned. Writes are applied in the order
    /// they were planned (to the contacts they were planned against, and
    /// later, once stored, to the ones readers see).
    pub(crate) fn apply(&mut self, write: &Write) {
        let number = parse_id(&write.id).expect("planned writes carry canonical ids");
        match &write.after {
            Some(Value::Object(after)) => {
                let mut fields = after.clone();
                fields.remove("id");
                self.records.insert(number, fields);
            }
            _ => {
                self.records.remove(&number);
            }
        }
    }

    /// Every record, by id.
    pub(crate) fn all(&self) -> BTreeMap<String, Value> {
        self.records
            .iter()
            .map(|(id, fields)| (id.to_string(), record(*id, fields)))
            .collect()
    }
}

/// Ids are decimal numbers; anything else names no record. `"007"` is not
/// `"7"`: only the canonical form names a record, as in a string key column.
fn parse_id(id: &str) -> Option<u64> {
    id.parse()
        .ok()
        .filter(|number: &u64| number.to_string() == id)
}

fn record(id: u64, fields: &Fields) -> Value {
    let mut record = fields.clone();
    record.insert("id".into(), Value::String(id.to_string()));
    Value::Object(record)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Fields {
        fields(value).unwrap()
    }

    /// Plans and applies, as a published write is.
    fn applied(contacts: &mut Contacts, write: Option<Write>) -> Write {
        let write = write.expect("the record exists");
        contacts.apply(&write);
        write
    }

    #[test]
    fn a_record_lives_through_create_update_delete_with_before_and_after() {
        let mut contacts = Contacts::default();
        let plan = contacts.plan_create(object(json!({"email": "a@b.c", "phone": null})));
        let created = applied(&mut contacts, Some(plan));
        assert_eq!(
            (created.op, created.id.as_str(), &created.before),
            (Op::Create, "1", &None)
        );
        assert_eq!(created.after, Some(json!({"id": "1", "email": "a@b.c"})));
        assert_eq!(contacts.get("1"), created.after);

        let plan = contacts.plan_update("1", object(json!({"email": null, "status": "lead"})));
        let updated = applied(&mut contacts, plan);
        assert_eq!(updated.before, created.after);
        assert_eq!(updated.after, Some(json!({"id": "1", "status": "lead"})));
        assert!(updated.changed());
        assert_eq!(contacts.get("1"), updated.after);

        let plan = contacts.plan_update("1", object(json!({"status": "lead", "x": null})));
        assert!(!applied(&mut contacts, plan).changed());

        let plan = contacts.plan_delete("1");
        let deleted = applied(&mut contacts, plan);
        assert_eq!(
            (deleted.op, deleted.before, deleted.after),
            (Op::Delete, updated.after, None)
        );
        assert_eq!(contacts.get("1"), None);
        assert!(contacts.plan_update("1", Fields::new()).is_none());
        assert!(contacts.plan_delete("1").is_none());
        assert_eq!(
            contacts.plan_create(Fields::new()).id,
            "2",
            "ids are not reused"
        );
    }

    #[test]
    fn a_plan_not_applied_changes_nothing_but_uses_up_its_id() {
        let mut contacts = Contacts::default();
        let plan = contacts.plan_create(object(json!({"a": 1})));
        applied(&mut contacts, Some(plan));
        let kept = contacts.all();
        contacts.plan_update("1", object(json!({"a": 2}))).unwrap();
        contacts.plan_delete("1").unwrap();
        let lost = contacts.plan_create(Fields::new());
        assert_eq!(contacts.all(), kept);
        assert_eq!(lost.id, "2");
        assert_eq!(contacts.plan_create(Fields::new()).id, "3");
    }

    #[test]
    fn bodies_must_be_objects_without_an_id_and_ids_canonical_numbers() {
        assert_eq!(fields(json!([1])), Err(FieldsError::NotAnObject));
        assert_eq!(fields(json!({"id": "9"})), Err(FieldsError::Id));
        let mut contacts = Contacts::default();
        let plan = contacts.plan_create(Fields::new());
        contacts.apply(&plan);
        for other in ["01", "+1", "x", "", "1.0"] {
            assert_eq!(contacts.get(other), None, "{other}");
            assert!(contacts.plan_delete(other).is_none(), "{other}");
        }
        assert!(contacts.get("1").is_some());
    }
}
