// A Hugging Face repository as a model source (`model: {repo, quant}`): its small files
// (config, tokenizer, template, generation config, image-processor settings, shard index)
// fetched whole and kept in Cache Storage, its safetensors shards streamed by source.js like
// GGUF parts. The engine converts the shards at load (src/engine/repo.rs) and writes the
// converted model out as one GGUF, which host.js keeps in Cache Storage in place of the
// shards (`convertedName`).
// Reference: the file layout transformers' `save_pretrained` writes.

import { BadRequestError, DownloadError, QuotaExceededError } from "./errors.js";

/** Load-time quantizations of the float matrices; `keep` keeps the repository's types. */
export const REPO_QUANTS = ["q8_0", "q4_k", "q4_0", "q4_1", "keep"];
/** The quantization when neither the caller nor the memory plan chose one. */
export const DEFAULT_REPO_QUANT = "q8_0";

/** The repository files besides the weights, and whether a model needs them. */
const FILES = [
  ["config.json", true],
  ["tokenizer.json", true],
  ["tokenizer_config.json", false],
  ["chat_template.jinja", false],
  ["generation_config.json", false],
  ["processor_config.json", false],
  ["preprocessor_config.json", false],
  ["model.safetensors.index.json", false],
];

/** The folder URL (ending in `/`) of `repo`: a plain folder URL, or a Hugging Face
 * repository page (`https://huggingface.co/ORG/NAME`, read from its `main` branch) or
 * `…/resolve/REVISION/` URL. */
export function repoBase(repo) {
  let u;
  try {
    u = new URL(String(repo), globalThis.location?.href);
  } catch {
    throw new BadRequestError(`model.repo ${JSON.stringify(String(repo))} is not a URL`);
  }
  u.search = "";
  u.hash = "";
  if (u.hostname === "huggingface.co" && !u.pathname.includes("/resolve/")) {
    const [org, name] = u.pathname.split("/").filter(Boolean);
    if (!org || !name) throw new BadRequestError(`model.repo ${u.href}: not an ORG/NAME repository`);
    u.pathname = `/${org}/${name}/resolve/main/`;
  }
  if (!u.pathname.endsWith("/")) u.pathname += "/";
  return u.href;
}

/** The quantization asked for, checked; `null` when none is (the memory plan chooses). */
export function repoQuant(quant) {
  if (quant === undefined || quant === null || quant === "auto") return null;
  const q = String(quant).toLowerCase();
  if (!REPO_QUANTS.includes(q)) throw new BadRequestError(`model.quant ${JSON.stringify(quant)}: one of ${REPO_QUANTS.join(", ")}`);
  return q;
}

/** The name under the repository's URL that its conversion at `quant` is kept as in Cache
 * Storage (never fetched: a GGUF the engine wrote while loading the shards). */
export const convertedName = (quant) => `webvlm-converted-${quant}.gguf`;

const fileKey = (url) => `${url}?webvlm-file`;

/** One small file of the repository (from the cache when there), or null when the
 * repository has none (HTTP 404) and it is optional. */
async function repoFile(url, required, cache, signal) {
  const hit = cache && (await cache.match(fileKey(url)));
  if (hit) return new Uint8Array(await hit.arrayBuffer());
  let r;
  try {
    r = await fetch(url, { signal });
  } catch (e) {
    throw new DownloadError(`${url}: ${e.message}`);
  }
  if (r.status === 404 && !required) return null;
  if (!r.ok) throw new DownloadError(`${url}: HTTP ${r.status}`);
  const bytes = new Uint8Array(await r.arrayBuffer());
  if (cache) {
    try {
      await cache.put(fileKey(url), new Response(bytes));
    } catch (e) {
      if (e?.name === "QuotaExceededError") throw new QuotaExceededError(`Cache Storage is full: ${e.message}`);
      throw e;
    }
  }
  return bytes;
}

/** The repository's small files: a Map name → bytes of those it has. */
export async function repoFiles(base, { cacheName, signal } = {}) {
  const cache = cacheName !== null && typeof caches !== "undefined" ? await caches.open(cacheName) : null;
  const got = await Promise.all(FILES.map(([name, required]) => repoFile(base + name, required, cache, signal)));
  const files = new Map();
  FILES.forEach(([name], i) => got[i] && files.set(name, got[i]));
  return files;
}
