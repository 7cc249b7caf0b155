//! Checking a pipeline file against its provider and schemas, and compiling
//! every JSONPath, script and schema it names.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Pipeline, Rule, SubjectTemplate, Target, TwoWay};
use crate::action::Action;
use crate::config::diagnostics::Diagnostics;
use crate::config::load::{SourceFile, Sourced};
use crate::config::model::PipelineConfig;
use crate::config::model::{Direction, TwoWayConfig};
use crate::config::suggest::did_you_mean;
use crate::config::yaml::Seg;
use crate::expr::{Script, ScriptEngine};
use crate::mapping::{JsonPath, compile_mapping, compile_source};
use crate::path;
use crate::provider::Provider;
use crate::schema::{Schema, SchemaCache, SchemaError};
use crate::twoway::Link;

/// What a pipeline is compiled against.
pub struct Context<'a> {
    pub dir: &'a Path,
    pub engine: &'a ScriptEngine,
    /// The name of every provider file, valid or not, for name lookups.
    pub provider_names: &'a [String],
    /// The providers that compiled.
    pub providers: &'a BTreeMap<String, Arc<Provider>>,
    /// The links that compiled, and the name of every link file.
    pub links: &'a BTreeMap<String, Arc<Link>>,
    pub link_names: &'a [String],
    pub schemas: &'a mut SchemaCache,
}

/// Checks and compiles one pipeline; `None` if it has errors (all of them
/// are in `diags`).
pub fn compile(
    src: &Sourced<PipelineConfig>,
    ctx: &mut Context<'_>,
    diags: &mut Diagnostics,
) -> Option<Pipeline> {
    let (cfg, file) = (&src.value, &*src.file);
    let before = diags.len();

    let mut source = cfg.source.nats.clone();
    let durable = source
        .durable
        .get_or_insert_with(|| cfg.name.clone())
        .clone();
    if durable.is_empty() || durable.contains(|c: char| c.is_whitespace() || ".*>".contains(c)) {
        let at = if cfg.source.nats.durable.is_some() {
            path!["source", "nats", "durable"].to_vec()
        } else {
            path!["name"].to_vec()
        };
        file.error(
            diags,
            &at,
            format!("\"{durable}\" cannot name a NATS consumer: no spaces, '.', '*' or '>'"),
        );
    }
    let at = |field: &str| path!["source", "nats", field];
    file.check_range(diags, &at("batch"), source.batch, 1, 10_000);
    file.check_range(
        diags,
        &at("max_ack_pending"),
        source.max_ack_pending,
        1,
        1_000_000,
    );
    file.check_range(
        diags,
        &at("max_ack_pending_bytes"),
        source.max_ack_pending_bytes,
        1024,
        1 << 30,
    );
    file.check_duration(
        diags,
        &at("ack_wait"),
        source.ack_wait.0,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    file.check_range(diags, &path!["max_key_bytes"], cfg.max_key_bytes, 1, 4096);

    let key = compile_source(file, &path!["key"], &cfg.key, "key", ctx.engine, diags);
    let account = cfg.account.as_ref().map(|account| {
        compile_source(
            file,
            &path!["account"],
            account,
            "account",
            ctx.engine,
            diags,
        )
    });
    let record = compile_source(
        file,
        &path!["record"],
        &cfg.record,
        "record",
        ctx.engine,
        diags,
    );
    let op = cfg
        .op
        .as_ref()
        .map(|op| json_path(file, &path!["op"], op, diags));
    let input_schema = cfg
        .input_schema
        .as_ref()
        .map(|p| schema(file, &path!["input_schema"], p, ctx, diags));
    let when = cfg
        .when
        .as_ref()
        .map(|w| script(file, &path!["when"], w, ctx.engine, diags));

    let target = target(file, cfg, ctx, diags);
    let object = match &target {
        Some(Target::Provider { provider, object }) => provider.objects.get(object),
        _ => None,
    };

    if cfg.rules.is_empty() {
        file.error(
            diags,
            &path!["rules"],
            "a pipeline needs at least one rule (records that match none are skipped)",
        );
    }
    let mut rules = Vec::new();
    for (i, rule) in cfg.rules.iter().enumerate() {
        let condition = script(
            file,
            &path!["rules", i, "if"],
            &rule.condition,
            ctx.engine,
            diags,
        );
        let action = match rule.then.parse::<Action>() {
            Ok(a) => Some(a),
            Err(e) => {
                file.error(diags, &path!["rules", i, "then"], e);
                None
            }
        };
        match (action, &target) {
            (
                Some(action),
                Some(Target::Provider {
                    provider,
                    object: name,
                }),
            ) if object.is_some_and(|object| !object.supports(action)) => {
                let need = if action == Action::Upsert {
                    "an upsert endpoint, or both create and update"
                } else {
                    action.as_str()
                };
                file.error(
                    diags,
                    &path!["rules", i, "then"],
                    format!(
                        "{action}: provider \"{}\" object \"{name}\" has no {need} endpoint",
                        provider.name
                    ),
                );
            }
            (Some(Action::Read), Some(Target::Subject(_))) => file.error(
                diags,
                &path!["rules", i, "then"],
                "read: a nats target publishes records and cannot read one",
            ),
            _ => {}
        }
        if let (Some(condition), Some(action)) = (condition, action) {
            rules.push(Rule { condition, action });
        }
    }

    let output_schema = cfg
        .target
        .schema
        .as_ref()
        .map(|p| schema(file, &path!["target", "schema"], p, ctx, diags));
    let mapping = compile_mapping(file, &path!["mapping"], &cfg.mapping, ctx.engine, diags);
    let sends_body = cfg
        .rules
        .iter()
        .any(|r| r.then.parse::<Action>().is_ok_and(Action::sends_body));
    if sends_body && cfg.mapping.is_empty() {
        file.error(
            diags,
            &path!["mapping"],
            "rules create or update records but the mapping is empty",
        );
    }

    if diags.len() != before {
        return None;
    }
    let two_way = cfg
        .two_way
        .as_ref()
        .and_then(|tw| two_way(file, tw, target.as_ref(), ctx, diags));
    if diags.len() != before {
        return None;
    }
    let target = target?;
    let input_schema = input_schema.flatten();
    let output_schema = output_schema.flatten();
    // The provider is not part of it: the runtime compares providers itself,
    // because a provider's rate limit can change under a running pipeline.
    let mut texts: Vec<String> = vec![file.text.clone()];
    texts.extend(
        input_schema
            .iter()
            .chain(output_schema.iter())
            .map(|s| s.fingerprint.to_string()),
    );
    if let Some(tw) = &two_way {
        texts.push(tw.link.fingerprint.to_string());
    }
    let fingerprint =
        crate::config::fingerprint(&texts.iter().map(String::as_str).collect::<Vec<_>>());
    Some(Pipeline {
        name: cfg.name.clone(),
        source,
        key: key?,
        account: match account {
            Some(compiled) => Some(compiled?),
            None => None,
        },
        max_key_bytes: cfg.max_key_bytes,
        idempotency_key: cfg.idempotency_key,
        record: record?,
        op: op.flatten(),
        input_schema,
        when: when.flatten(),
        rules,
        mapping: mapping?,
        output_schema,
        target,
        two_way,
        dead_letter_subject: cfg
            .dead_letter
            .as_ref()
            .map(|d| d.subject.clone())
            .unwrap_or_else(|| format!("syncflow.dlq.{}", cfg.name)),
        tests: cfg.tests.clone(),
        engine: ctx.engine.clone(),
        fingerprint,
    })
}

/// A pipeline's part in a two-way link: the link exists, and the pipeline
/// writes to the link's side its direction leads to.
fn two_way(
    file: &SourceFile,
    cfg: &TwoWayConfig,
    target: Option<&Target>,
    ctx: &Context<'_>,
    diags: &mut Diagnostics,
) -> Option<TwoWay> {
    let Some(link) = ctx.links.get(&cfg.link) else {
        if !ctx.link_names.contains(&cfg.link) {
            file.error(
                diags,
                &path!["two_way", "link"],
                format!(
                    "unknown link \"{}\"{}",
                    cfg.link,
                    did_you_mean(&cfg.link, ctx.link_names.iter().map(String::as_str))
                ),
            );
        }
        return None;
    };
    let modified = json_path(file, &path!["two_way", "modified"], &cfg.modified, diags)?;
    let external_id = match &cfg.external_id {
        Some(_) if cfg.direction == Direction::Inbound => {
            file.error(
                diags,
                &path!["two_way", "external_id"],
                "external_id is for outbound pipelines (System A's record naming the provider's id)",
            );
            return None;
        }
        Some(p) => Some(json_path(file, &path!["two_way", "external_id"], p, diags)?),
        None => None,
    };
    let internal_id = match &cfg.internal_id {
        Some(_) if cfg.direction == Direction::Outbound => {
            file.error(
                diags,
                &path!["two_way", "internal_id"],
                "internal_id is for inbound pipelines (the provider's record naming System A's key)",
            );
            return None;
        }
        Some(p) => Some(json_path(file, &path!["two_way", "internal_id"], p, diags)?),
        None => None,
    };
    let (side, expected) = match cfg.direction {
        Direction::Outbound => ("external", &link.external),
        Direction::Inbound => ("internal", &link.internal),
    };
    let same = match (target?, expected) {
        (
            Target::Provider { provider, object },
            Target::Provider {
                provider: p,
                object: o,
            },
        ) => provider.name == p.name && object == o,
        (Target::Subject(a), Target::Subject(b)) => a == b,
        _ => false,
    };
    if !same {
        file.error(
            diags,
            &path!["target"],
            format!(
                "an {} pipeline of link \"{}\" writes to the link's {side} side: its target must be the same",
                cfg.direction.as_str(),
                link.name
            ),
        );
        return None;
    }
    Some(TwoWay {
        link: link.clone(),
        direction: cfg.direction,
        modified,
        changes: cfg.changes,
        external_id,
        internal_id,
    })
}

/// The target: a provider and one of its objects, or a NATS subject.
fn target(
    file: &SourceFile,
    cfg: &PipelineConfig,
    ctx: &Context<'_>,
    diags: &mut Diagnostics,
) -> Option<Target> {
    let t = &cfg.target;
    match (&t.provider, &t.object, &t.nats) {
        (Some(provider), Some(object), None) => {
            let Some(provider) = ctx.providers.get(provider) else {
                if !ctx.provider_names.contains(provider) {
                    let names = ctx.provider_names.iter().map(String::as_str);
                    file.error(
                        diags,
                        &path!["target", "provider"],
                        format!(
                            "unknown provider \"{provider}\"{}",
                            did_you_mean(provider, names)
                        ),
                    );
                }
                // Otherwise the provider file has errors of its own, reported
                // there; repeating them here would only add noise.
                return None;
            };
            if !provider.objects.contains_key(object) {
                file.error(
                    diags,
                    &path!["target", "object"],
                    format!(
                        "provider \"{}\" has no object \"{object}\"{}",
                        provider.name,
                        did_you_mean(object, provider.objects.keys().map(String::as_str))
                    ),
                );
                return None;
            }
            if provider.account_auth.is_some() && cfg.account.is_none() {
                file.error(
                    diags,
                    &path!["target", "provider"],
                    format!(
                        "provider \"{}\" takes credentials per account (auth.per_account): the pipeline must say whose records it carries (account: $.tenant_id)",
                        provider.name
                    ),
                );
                return None;
            }
            Some(Target::Provider {
                provider: provider.clone(),
                object: object.clone(),
            })
        }
        (None, None, Some(_)) if cfg.account.is_some() => {
            file.error(
                diags,
                &path!["account"],
                "account applies a provider's rate limit per account; a NATS subject target has none",
            );
            None
        }
        (None, None, Some(nats)) => match SubjectTemplate::parse(&nats.subject) {
            Ok(subject) => Some(Target::Subject(subject)),
            Err(e) => {
                file.error(diags, &path!["target", "nats", "subject"], e);
                None
            }
        },
        (_, _, Some(_)) => {
            file.error(
                diags,
                &path!["target", "nats"],
                "a target is either a provider object (provider, object) or a NATS subject (nats), not both",
            );
            None
        }
        (None, _, None) => {
            file.error(
                diags,
                &path!["target"],
                "the target needs a provider and an object, or nats: { subject }",
            );
            None
        }
        (Some(_), None, None) => {
            file.error(
                diags,
                &path!["target", "provider"],
                "the target names a provider but no object",
            );
            None
        }
    }
}

fn json_path(
    file: &SourceFile,
    at: &[Seg],
    text: &str,
    diags: &mut Diagnostics,
) -> Option<JsonPath> {
    JsonPath::compile(text)
        .map_err(|e| file.text_error(diags, at, 1, e.col, e.message))
        .ok()
}

fn script(
    file: &SourceFile,
    at: &[Seg],
    text: &str,
    engine: &ScriptEngine,
    diags: &mut Diagnostics,
) -> Option<Script> {
    engine
        .compile(text)
        .map_err(|e| {
            file.text_error(
                diags,
                at,
                e.line,
                e.col,
                format!("invalid Rhai script: {}", e.message),
            )
        })
        .ok()
}

fn schema(
    file: &SourceFile,
    at: &[Seg],
    rel: &str,
    ctx: &mut Context<'_>,
    diags: &mut Diagnostics,
) -> Option<Schema> {
    match ctx.schemas.get(ctx.dir, rel) {
        Ok(s) => Some(s),
        Err(SchemaError::Missing { message }) => {
            file.error(diags, at, message);
            None
        }
        Err(SchemaError::Invalid {
            file: schema_file,
            pos,
            message,
        }) => {
            // Reported once, in the schema file, however many pipelines use it.
            let already = diags
                .iter()
                .any(|d| d.file == schema_file && d.line == pos.line && d.col == pos.col);
            if !already {
                diags.push(&schema_file, pos, message);
            }
            None
        }
    }
}
