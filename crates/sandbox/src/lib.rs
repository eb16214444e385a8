//! A local stand-in for the Google Cloud APIs the guide touches.
