// The engine package (pkg/index.js), imported once on first use; model.js and storage.js both
// need it, so it lives below them.

import { api, setApi } from "./state.js";
import { pageError, showError } from "./errors.js";

/** Imports the package module once. When it is missing: null, and the PackageMissing error
 * shown unless `quiet`; a later call tries again. */
export async function getApi({ quiet = false } = {}) {
  if (api) return api;
  try {
    setApi(await import("../pkg/index.js"));
    return api;
  } catch (e) {
    if (!quiet) showError(pageError("PackageMissing", `./pkg/index.js: ${e.message ?? e}`));
    return null;
  }
}
