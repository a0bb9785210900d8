//! Which pipeline a schema belongs to. The operator marks a schema it creates with the pipeline's UID
//! (`COMMENT ON SCHEMA … IS 'cryptoviz.io/owner-uid=<uid> <namespace>/<name>'`); it uses a schema only when the
//! mark is its own, and drops one only then. Two pipelines that resolve to one schema therefore never share it:
//! the second is told `SchemaConflict`, exactly as a second claimant of a topic is told `TopicConflict`.

use sqlx::{Connection, PgConnection};

use super::lock::{Scope, lock};
use super::{Recorder, SchemaError, quote_ident, sql};

/// The start of an owner mark.
pub const MARK_PREFIX: &str = "cryptoviz.io/owner-uid=";

/// The pipeline a schema is for.
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    /// The pipeline's UID: what the mark compares.
    pub uid: &'a str,
    /// Its namespace and name, for people reading the mark.
    pub namespace: &'a str,
    /// The pipeline's name.
    pub name: &'a str,
}

impl Owner<'_> {
    /// The comment written on the schema.
    pub fn mark(&self) -> String {
        format!("{MARK_PREFIX}{} {}/{}", self.uid, self.namespace, self.name)
    }
}

/// The UID in a schema comment, when it is an owner mark.
pub fn marked_uid(comment: &str) -> Option<&str> {
    comment.strip_prefix(MARK_PREFIX)?.split_whitespace().next()
}

/// Whether a pipeline may use a schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Marked with this pipeline's UID (now, or from before).
    Ours,
    /// Marked for another pipeline (the mark's text), or present without a mark (`None`).
    Taken(Option<String>),
}

/// What dropping a pipeline's schema did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The schema carried this pipeline's mark and is gone.
    Dropped,
    /// There was no such schema.
    Absent,
    /// The schema is not this pipeline's (another's mark, or none) and was left alone.
    NotOurs(Option<String>),
}

/// `None` when the schema does not exist, else its comment (if any).
async fn comment(c: &mut PgConnection, schema: &str) -> Result<Option<Option<String>>, SchemaError> {
    sqlx::query_scalar("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1")
        .bind(schema)
        .fetch_optional(&mut *c)
        .await
        .map_err(sql("read schema owner"))
}

fn comment_sql(schema: &str, owner: &Owner<'_>) -> String {
    format!("COMMENT ON SCHEMA {} IS '{}'", quote_ident(schema), owner.mark().replace('\'', "''"))
}

/// Claim `schema` for `owner`: create it with the mark when it does not exist; accept it when it carries the
/// owner's mark. An unmarked schema is marked only when `adopt_unmarked` (the pipeline recorded it as its own in
/// status before marks existed). Serialised by the schema's advisory lock, so two claimants never both win.
pub async fn claim(
    c: &mut PgConnection,
    rec: &dyn Recorder,
    schema: &str,
    owner: &Owner<'_>,
    adopt_unmarked: bool,
) -> Result<Claim, SchemaError> {
    // The common case, a schema already ours, reads once and writes nothing.
    if let Some(Some(text)) = comment(c, schema).await?
        && marked_uid(&text) == Some(owner.uid)
    {
        return Ok(Claim::Ours);
    }
    let mut tx = c.begin().await.map_err(sql("claim schema"))?;
    lock(&mut tx, schema, Scope::Transaction).await?;
    let (write, claim) = match comment(&mut tx, schema).await? {
        None => (Some(format!("CREATE SCHEMA {}; {}", quote_ident(schema), comment_sql(schema, owner))), Claim::Ours),
        Some(Some(text)) if marked_uid(&text) == Some(owner.uid) => (None, Claim::Ours),
        Some(Some(text)) if marked_uid(&text).is_some() => (None, Claim::Taken(Some(text))),
        Some(_) if adopt_unmarked => (Some(comment_sql(schema, owner)), Claim::Ours),
        Some(_) => (None, Claim::Taken(None)),
    };
    if let Some(stmt) = write {
        let r = sqlx::raw_sql(sqlx::AssertSqlSafe(stmt)).execute(&mut *tx).await.map_err(sql("claim schema"));
        rec.database("claim_schema", r.is_ok());
        r?;
    }
    tx.commit().await.map_err(sql("claim schema"))?;
    Ok(claim)
}

/// Drop `schema` and everything in it, only when it carries `owner_uid`'s mark. Idempotent.
pub async fn drop_owned(
    c: &mut PgConnection,
    rec: &dyn Recorder,
    schema: &str,
    owner_uid: &str,
) -> Result<Dropped, SchemaError> {
    let mut tx = c.begin().await.map_err(sql("drop schema"))?;
    lock(&mut tx, schema, Scope::Transaction).await?;
    let outcome = match comment(&mut tx, schema).await? {
        None => Dropped::Absent,
        Some(Some(text)) if marked_uid(&text) == Some(owner_uid) => {
            let stmt = format!("DROP SCHEMA {} CASCADE", quote_ident(schema));
            let r = sqlx::raw_sql(sqlx::AssertSqlSafe(stmt)).execute(&mut *tx).await.map_err(sql("drop schema"));
            rec.database("drop_schema", r.is_ok());
            r?;
            Dropped::Dropped
        }
        Some(text) => Dropped::NotOurs(text),
    };
    tx.commit().await.map_err(sql("drop schema"))?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_names_its_uid_and_nothing_else_is_a_mark() {
        let o = Owner { uid: "1f2e-3d", namespace: "ns", name: "markets" };
        assert_eq!(o.mark(), "cryptoviz.io/owner-uid=1f2e-3d ns/markets");
        assert_eq!(marked_uid(&o.mark()), Some("1f2e-3d"));
        assert_eq!(marked_uid("hand-made schema"), None);
        assert_eq!(marked_uid("cryptoviz.io/owner-uid="), None);
    }
}
