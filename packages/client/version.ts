// Copyright 2026 the Valise authors. Apache-2.0 license.
// The version is the package's own (deno.json), so a release bumps it in one place.
import meta from "./deno.json" with { type: "json" };

/** The client's version: its package's `version`, sent in `client_type` (`valise-client/…`). */
export const CLIENT_VERSION: string = meta.version;
