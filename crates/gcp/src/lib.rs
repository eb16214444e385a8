//! Google Cloud REST clients written against the discovery documents.
