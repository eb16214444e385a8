//! Block types, block schemas and block documents.

use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use super::seg;
use crate::client::{OptionalExt, PrefectClient};
use crate::error::PrefectError;
use crate::models::{
    BlockDocument, BlockDocumentCreate, BlockSchema, BlockType, SecretBlockDocument, SecretValue,
};

impl PrefectClient {
    /// `GET /health`: `Ok` when the server answers `true`.
    pub async fn health(&self) -> Result<(), PrefectError> {
        let answer = self.get("/health", "the health check").await;
        let v: serde_json::Value = answer.map_err(|e| match e {
            PrefectError::NotFound { .. } => PrefectError::Config(format!(
                "{} does not look like a Prefect API (GET /health answered 404); \
                 the API URL usually ends in /api",
                self.config.api_url
            )),
            other => other,
        })?;
        if v == serde_json::Value::Bool(true) {
            Ok(())
        } else {
            Err(PrefectError::Decode {
                what: "the health check".into(),
                detail: "the server did not answer `true`".into(),
            })
        }
    }

    /// The block type with this slug, `None` when the server has none.
    pub async fn block_type_by_slug(&self, slug: &str) -> Result<Option<BlockType>, PrefectError> {
        self.get(
            &format!("/block_types/slug/{}", seg(slug)),
            &format!("block type `{slug}`"),
        )
        .await
        .optional()
    }

    /// All schemas registered for a block type (newest first, as the server sorts them).
    pub async fn block_schemas_for_type(
        &self,
        block_type_id: Uuid,
    ) -> Result<Vec<BlockSchema>, PrefectError> {
        // block_schemas/filter has no slug filter: it must be filtered by the type's id.
        let body =
            json!({"block_schemas": {"block_type_id": {"any_": [block_type_id]}}, "limit": 200});
        self.post("/block_schemas/filter", &body, "block schemas")
            .await
    }

    /// A block document by type slug and name, with secrets masked.
    pub async fn block_document_by_name(
        &self,
        type_slug: &str,
        name: &str,
    ) -> Result<Option<BlockDocument>, PrefectError> {
        self.json(
            Method::GET,
            &block_by_name_path(type_slug, name),
            &[("include_secrets", "false".into())],
            None,
            &format!("block `{type_slug}/{name}`"),
        )
        .await
        .optional()
    }

    /// A block document by type slug and name, with its real (secret) data.
    pub async fn block_document_by_name_with_secrets(
        &self,
        type_slug: &str,
        name: &str,
    ) -> Result<Option<SecretBlockDocument>, PrefectError> {
        self.json(
            Method::GET,
            &block_by_name_path(type_slug, name),
            &[("include_secrets", "true".into())],
            None,
            &format!("block `{type_slug}/{name}`"),
        )
        .await
        .optional()
    }

    /// A block document by id, with secrets masked.
    pub async fn block_document(&self, id: Uuid) -> Result<Option<BlockDocument>, PrefectError> {
        self.json(
            Method::GET,
            &format!("/block_documents/{id}"),
            &[("include_secrets", "false".into())],
            None,
            &format!("block document {id}"),
        )
        .await
        .optional()
    }

    /// A block document by id, with its real data (what a worker resolving `$ref` needs).
    pub async fn block_document_with_secrets(
        &self,
        id: Uuid,
    ) -> Result<Option<SecretBlockDocument>, PrefectError> {
        self.json(
            Method::GET,
            &format!("/block_documents/{id}"),
            &[("include_secrets", "true".into())],
            None,
            &format!("block document {id}"),
        )
        .await
        .optional()
    }

    /// Creates a block document; the answer has its secrets masked. 409 if the name is taken.
    pub async fn create_block_document(
        &self,
        doc: &BlockDocumentCreate,
    ) -> Result<BlockDocument, PrefectError> {
        let body = json!({
            "name": doc.name,
            "block_type_id": doc.block_type_id,
            "block_schema_id": doc.block_schema_id,
            "data": doc.data.expose(),
        });
        self.post("/block_documents/", &body, &format!("block `{}`", doc.name))
            .await
    }

    /// Updates a block document's data. With `merge_existing_data` the server merges the keys
    /// given into the stored data (masked `********` values keep the stored secret); without,
    /// the data is replaced.
    pub async fn update_block_document(
        &self,
        id: Uuid,
        data: &SecretValue,
        block_schema_id: Option<Uuid>,
        merge_existing_data: bool,
    ) -> Result<(), PrefectError> {
        let mut body = json!({"data": data.expose(), "merge_existing_data": merge_existing_data});
        if let Some(schema) = block_schema_id {
            body["block_schema_id"] = json!(schema);
        }
        self.no_content(
            Method::PATCH,
            &format!("/block_documents/{id}"),
            Some(&body),
            &format!("block document {id}"),
        )
        .await
    }

    /// Deletes a block document: `false` when it was already gone.
    pub async fn delete_block_document(&self, id: Uuid) -> Result<bool, PrefectError> {
        self.delete(
            &format!("/block_documents/{id}"),
            &format!("block document {id}"),
        )
        .await
    }
}

fn block_by_name_path(type_slug: &str, name: &str) -> String {
    format!(
        "/block_types/slug/{}/block_documents/name/{}",
        seg(type_slug),
        seg(name)
    )
}

/// Picks the schema to create documents with: the one whose version is `prefer_version`
/// (the installed collection's) when present, else the highest numbered version. The server's
/// own "most recent" is by creation time, which is the bundled (older) schema, not the newest.
pub fn pick_block_schema<'a>(
    schemas: &'a [BlockSchema],
    prefer_version: Option<&str>,
) -> Option<&'a BlockSchema> {
    if let Some(v) = prefer_version
        && let Some(s) = schemas.iter().find(|s| s.version.as_deref() == Some(v))
    {
        return Some(s);
    }
    schemas
        .iter()
        .max_by(|a, b| version_key(a.version.as_deref()).cmp(&version_key(b.version.as_deref())))
}

/// `0.6.22` -> `[0, 6, 22]`; non-numeric versions (`non-versioned`) sort first.
fn version_key(v: Option<&str>) -> Vec<u64> {
    let Some(v) = v else { return Vec::new() };
    let parts: Option<Vec<u64>> = v.split('.').map(|p| p.parse().ok()).collect();
    parts.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(v: &str) -> BlockSchema {
        BlockSchema {
            id: Uuid::new_v4(),
            checksum: String::new(),
            block_type_id: Uuid::nil(),
            version: Some(v.into()),
            fields: serde_json::Value::Null,
        }
    }

    #[test]
    fn highest_version_wins_over_creation_order() {
        let s = vec![
            schema("0.5.8"),
            schema("non-versioned"),
            schema("0.6.22"),
            schema("0.6.3"),
        ];
        assert_eq!(
            pick_block_schema(&s, None).and_then(|s| s.version.as_deref()),
            Some("0.6.22")
        );
        assert_eq!(
            pick_block_schema(&s, Some("0.5.8")).and_then(|s| s.version.as_deref()),
            Some("0.5.8")
        );
        assert_eq!(
            pick_block_schema(&s, Some("9.9.9")).and_then(|s| s.version.as_deref()),
            Some("0.6.22")
        );
        assert!(pick_block_schema(&[], None).is_none());
    }
}
