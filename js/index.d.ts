// Type declarations for the webvlm package (index.js).

/** A URL (its SHA-256 is checked when the server publishes one: Hugging Face's X-Linked-ETag),
 * a local File/Blob, or either with an explicit `sha256` (64 hex digits) to verify. */
export type ModelSource = string | URL | Blob | File | { url: string; sha256?: string } | { blob: Blob; name?: string; sha256?: string };

export interface LoadProgress {
  /** "headers" (split parts: reading each part's header first), "download" (bytes from the
   * network), "cache" (from Cache Storage), "ready". */
  phase: "headers" | "download" | "cache" | "ready";
  loadedBytes: number;
  totalBytes: number;
  /** Bytes of this load that came from the network (0 on a cached visit). */
  networkBytes: number;
  fraction: number;
  bytesPerSecond: number;
  etaSeconds: number | null;
  text: string;
}

export interface EngineOptions {
  /** Tokens the KV cache holds (default 4096: a 1540-pixel image takes up to ~3000). */
  maxContext?: number;
  /** Tokens per prefill chunk (default 512 on GPUs, 128 on CPU adapters). */
  maxChunk?: number;
  /** f16 prefill matmuls where the adapter has shader-f16 (default: on GPUs that have it,
   *  off on CPU adapters such as SwiftShader; the KV cache is f16 by default either way). */
  f16?: boolean;
  /** f16 KV cache (default true: half the memory, any adapter). */
  kvF16?: boolean;
  /** Requantize the vision matrices at load time: "q8_0" | "q4_1" | "q4_0". */
  visionQuant?: "q8_0" | "q4_1" | "q4_0";
  /** GPU memory for saved prompt prefixes, evicted least recently used (default 256 MiB;
   * 0 keeps only the last request's sequence). */
  promptCacheBytes?: number;
  /** Resized-area bounds in pixels of area-bounded image processors (Qwen3.5's `min_pixels`
   * and `max_pixels`): fewer pixels, fewer image tokens. Default: the model's own, with the
   * largest area within the square of the image edge (`image_max_edge`, default 1540). */
  imageMinArea?: number;
  imageMaxArea?: number;
  /** GPU memory the model may use: "8G", "512M" or bytes (default "4G": WebGPU reports no
   * memory size). The model is planned from its headers before the download starts, and one
   * that does not fit at `maxContext` is refused with an `AdapterTooSmallError` naming the
   * largest context that would. */
  gpuMemory?: string;
  /** The CPU backend's matvec mode: "fast" (default: 8-bit activations and integer dot
   * products, as llama.cpp's CPU backend; logits within a few percent of f32 math) or
   * "exact" (f32 activations, the GPU's tolerances). */
  cpuMode?: "fast" | "exact";
  /** Chat requests that decode together in batched steps (continuous batching): requests
   * made together (concurrent `create` calls, chat or Responses, a batch) run up to this many
   * at a time, and those sent while they decode join them (but for those with image URLs to
   * fetch), each
   * on a context of its own (`maxContext` tokens of KV cache), and give the tokens they give
   * alone. 1 runs them one after another (default 4). */
  parallel?: number;
}

/** Load-time quantization of a repository's float matrices; "keep" keeps the stored types
 * (BF16, F16, F32). Default: "q8_0" when the model fits `gpuMemory` with it, else "q4_0". */
export type RepoQuant = "q8_0" | "q4_k" | "q4_0" | "q4_1" | "keep";

/** An OpenAI-compatible server (vLLM, llama.cpp's server, OpenAI, `webvlm serve`). */
export interface RemoteOptions {
  /** The API's base URL, up to the version: "https://host/v1" (relative URLs resolve against
   * the page). The server must answer this page's origin with CORS headers. */
  baseURL: string | URL;
  /** Sent as `Authorization: Bearer KEY`. */
  apiKey?: string;
  /** The model id requests name (default: the first `GET /models` lists). */
  model?: string;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
  /** The `fetch` requests go through (default: the global one). */
  fetch?: typeof fetch;
}

export interface CreateEngineOptions {
  /** `text` may be split GGUF parts: an array in part order, or the URL of the first part
   * (`name-00001-of-00003.gguf`), which stands for all of them. Or `repo`: a Hugging Face
   * model folder (`config.json`, `tokenizer.json`, safetensors shards), as a plain folder URL,
   * `https://huggingface.co/ORG/NAME` (its `main` branch) or `…/resolve/REVISION/`; its float
   * matrices are quantized at load to `quant`, and the converted model is kept in Cache
   * Storage as one GGUF in place of the shards: later loads read it with no shard request and
   * no conversion (`info.converted`). */
  model:
    | { text: ModelSource | ModelSource[]; mmproj?: ModelSource }
    | { repo: string | URL; quant?: RepoQuant; mmproj?: ModelSource };
  onProgress?: (p: LoadProgress) => void;
  /** Run the engine in a module worker (default true). */
  worker?: boolean;
  engine?: EngineOptions;
  /** Cache Storage name for weight chunks (default "webvlm-weights-v1"); `null` streams the
   * weights without storing them, so every load downloads them again. */
  cacheName?: string | null;
  /** Download chunk size in bytes (default 32 MiB). */
  chunkBytes?: number;
  /** How long a stream may wait with 4 chunks unread (its reader stopped reading) before the
   * generation is cut and the engine goes on with the next request; reading that stream on
   * gives its chunks, then StreamStalledError. Default 30 000 ms; `Infinity`: never. */
  streamStallMs?: number;
  /** Cancels the load: the worker ends (with `worker: false`, the downloads stop and what was
   * built is freed), the promise rejects with DownloadError; chunks already stored stay
   * cached for the next attempt. */
  signal?: AbortSignal;
  /** With `fallback: "remote"`: the server used when the model does not fit (or, with
   * `backend: "webgpu"`, this browser has no WebGPU). */
  remote?: RemoteOptions;
  /** "remote": use `remote` when the local load fails with AdapterTooSmallError (planned from
   * the headers, before any download) or NoWebGPUError (`backend: "webgpu"` only: no
   * `navigator.gpu`, no adapter). */
  fallback?: "remote";
  /** Where the model runs (default "auto": WebGPU on a hardware adapter; the CPU backend,
   * compiled into the same wasm module, where the browser has no WebGPU or only a software
   * adapter such as SwiftShader or WARP). `info.backend` says which runs and why. */
  backend?: "auto" | "webgpu" | "cpu";
  /** Threads of the CPU backend (default: half the logical cores, at most 8, where the engine
   * runs in its worker on a cross-origin-isolated page; else 1). More than one loads the
   * threaded wasm build, whose pool's threads are Web Workers. */
  threads?: number;
  /** Load the SIMD128 wasm build even where relaxed SIMD exists (tests and benchmarks). */
  wasmBuild?: "simd128";
}

/** `createEngine({remote})`: the engine interface over HTTP, no model in the page. */
export interface RemoteEngineOptions {
  remote: RemoteOptions;
  /** Cancels connecting (`GET /models`): the promise rejects with an AbortError. */
  signal?: AbortSignal;
}

export type ContentPart =
  | { type: "text"; text: string }
  | { type: "image_url"; image_url: { url: string } | string };

export interface ChatMessage {
  role: "system" | "developer" | "user" | "assistant";
  content: string | ContentPart[];
}

export type ResponseFormat =
  | { type: "text" }
  | { type: "json_object" }
  | { type: "json_schema"; json_schema: { name: string; description?: string; schema?: object; strict?: boolean } };

/** OpenAI's chat-completions request. Unknown fields and out-of-range values reject with a
 * BadRequestError naming the field (`param`, `code`) before any work starts. */
export interface ChatCompletionRequest {
  messages: ChatMessage[];
  /** Accepted and echoed; the loaded model answers. */
  model?: string;
  /** Default: until the context is full. */
  max_tokens?: number;
  max_completion_tokens?: number;
  /** [0, 2], default 1; 0 = greedy. */
  temperature?: number;
  /** (0, 1], default 1. */
  top_p?: number;
  /** 0 = off (default). */
  top_k?: number;
  /** [0, 1]: keep tokens at least this fraction as likely as the most likely one. */
  min_p?: number;
  /** [-2, 2]: minus count × penalty per token already generated. */
  frequency_penalty?: number;
  /** [-2, 2]: minus penalty once per token already generated. */
  presence_penalty?: number;
  /** (0, 10], 1 = off: divides positive / multiplies negative logits of prompt and reply tokens. */
  repetition_penalty?: number;
  /** Token id → bias in [-100, 100], added to the logits. */
  logit_bias?: Record<string, number>;
  /** Same seed, same settings, same prompt: same output. Without one, each request draws its own. */
  seed?: number;
  /** Up to 4 strings; generation stops before the first one (not included in the output). */
  stop?: string | string[];
  /** 1–16 choices from one prefill (choice i samples with seed + i); at most the engine's `parallel` for calls made together. */
  n?: number;
  /** Per-token log-probabilities: the log-softmax of the model's raw logits, before
   * penalties, bias, temperature and filtering. */
  logprobs?: boolean;
  /** 0–20 most likely alternatives per token (needs logprobs). */
  top_logprobs?: number;
  /** JSON output enforced token by token (llguidance). */
  response_format?: ResponseFormat;
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  /** Longest image edge in pixels before tokenization (default and maximum: the model's image size, `info.maxImageEdge`, 1540 for Ministral 3). */
  image_max_edge?: number;
  /** Extra variables for the model's chat template, as vLLM's `chat_template_kwargs`: a JSON
   * object of at most 16 KiB, e.g. `{ enable_thinking: false }` for Qwen3.5 (no think block).
   * `messages`, `add_generation_prompt`, `bos_token` and `eos_token` may not be set. */
  chat_template_kwargs?: Record<string, unknown>;
  /** Functions the model may call, in the model family's own call syntax (docs/API.md). */
  tools?: { type: "function"; function: FunctionTool }[];
  /** `required` and a named function are enforced by grammar; `auto` constrains a call once
   * the model starts one; `none` forbids calls. */
  tool_choice?: "none" | "auto" | "required" | { type: "function"; function: { name: string } };
  parallel_tool_calls?: boolean;
  /** Stops the request (finish_reason "abort"). */
  signal?: AbortSignal;
}

export interface FunctionTool {
  /** 1-64 characters of a-z, A-Z, 0-9, _ and -. */
  name: string;
  description?: string;
  /** A JSON Schema object; the call's arguments are constrained to it. */
  parameters?: object;
  strict?: boolean;
}

export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; /** JSON text. */ arguments: string };
}

/** OpenAI's Responses request: `input` as text or items; the chat request's sampling fields
 * and webvlm's extras are taken too. */
export interface ResponsesRequest {
  input: string | ResponseInputItem[];
  instructions?: string;
  model?: string;
  /** Continues a stored response's conversation (its prefix is the prompt cache's to reuse). */
  previous_response_id?: string;
  /** Default true: kept in a bounded store (the 256 most recent, 64 MiB of JSON). */
  store?: boolean;
  tools?: ({ type: "function" } & FunctionTool)[];
  tool_choice?: "none" | "auto" | "required" | { type: "function"; name: string };
  parallel_tool_calls?: boolean;
  text?: { format?: { type: "text" } | { type: "json_object" } | { type: "json_schema"; name: string; schema?: object; strict?: boolean } };
  max_output_tokens?: number;
  temperature?: number;
  top_p?: number;
  seed?: number;
  metadata?: Record<string, string>;
  stream?: boolean;
  signal?: AbortSignal;
}

export type ResponseInputItem =
  | { type?: "message"; role: "system" | "developer" | "user" | "assistant"; content: string | (
      | { type: "input_text" | "output_text"; text: string }
      | { type: "input_image"; image_url: string; detail?: string })[] }
  | { type: "function_call"; call_id: string; name: string; arguments: string }
  | { type: "function_call_output"; call_id: string; output: string }
  | ResponseOutputItem;

export type ResponseOutputItem =
  | { type: "message"; id: string; status: string; role: "assistant"; content: { type: "output_text"; text: string }[] }
  | { type: "reasoning"; id: string; content: { type: "reasoning_text"; text: string }[] }
  | { type: "function_call"; id: string; call_id: string; name: string; arguments: string; status: string };

export interface ResponseObject {
  id: string;
  object: "response";
  created_at: number;
  status: "completed" | "incomplete" | "cancelled" | "in_progress";
  incomplete_details: { reason: "max_output_tokens" } | null;
  model: string;
  output: ResponseOutputItem[];
  previous_response_id: string | null;
  usage: { input_tokens: number; input_tokens_details: { cached_tokens: number }; output_tokens: number; total_tokens: number } | null;
}

/** A streamed Responses event (`response.created`, `response.output_text.delta`,
 * `response.function_call_arguments.delta`, ..., `response.completed`). */
export interface ResponseStreamEvent {
  type: string;
  sequence_number: number;
  [field: string]: unknown;
}

export interface Timings {
  time_to_first_token: number;
  /** Prompt tokens not served by the prompt cache, per second of time to first token. */
  prefill_tokens_per_second: number;
  decode_tokens_per_second: number;
  /** Seconds computing JSON-constraint masks (overlapping the GPU's work). */
  mask_seconds: number;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Prompt tokens whose KV cache was reused from the previous request. */
  prompt_tokens_details: { cached_tokens: number };
  timings: Timings;
}

export type FinishReason = "stop" | "length" | "abort";

export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: { index: number; message: {
      role: "assistant";
      content: string;
      /** The text of the reply's `<think>` block, for models whose template writes think
       * tags (null when the reply had none); absent for other models. */
      reasoning_content?: string | null;
      tool_calls?: ToolCall[];
    }; finish_reason: FinishReason | "tool_calls"; logprobs: { content: TokenLogprob[] } | null }[];
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: { index: number; delta: { role?: "assistant"; content?: string; /** Think-block text (see `ChatCompletion`). */ reasoning_content?: string }; finish_reason: FinishReason | null; logprobs: { content: TokenLogprob[] } | null }[];
  usage?: Usage;
}

export interface BatchRequest {
  custom_id: string;
  body: Omit<ChatCompletionRequest, "stream" | "signal">;
}

export interface BatchResult {
  id: string;
  custom_id: string | null;
  response: { status_code: 200; body: ChatCompletion } | null;
  error: { code: string; message: string; param: string | null } | null;
}

export interface BatchProgress {
  completed: number;
  total: number;
  failed: number;
  result: BatchResult;
  /** The line `result` answers (results end in any order when requests run together). */
  index: number;
}

export interface ModelInfo {
  /** False: the model runs in this page. */
  remote: false;
  architecture: string;
  name: string | null;
  layers: number;
  hidden: number;
  vocab: number;
  vision: boolean;
  /** Whether the chat template writes tool calls (requests with `tools` are refused otherwise). */
  tools: boolean;
  weightBytes: number;
  maxContext: number;
  /** The vision encoder's image size: the largest `image_max_edge` a request may ask for (null without vision). */
  maxImageEdge: number | null;
  promptCacheBytes: number;
  adapter: string;
  /** Where the model runs and why (`createEngine({backend})`): WebGPU, or the CPU backend with
   * the SIMD level its kernels run at (the wasm build's: "relaxed" or "simd128"), its threads
   * and why that many, and its mode ("fast": 8-bit activations, as llama.cpp's CPU backend).
   * `build` is the wasm build loaded ("-threads": with shared memory, for a pool of threads). */
  backend:
    | { name: "webgpu"; reason: string; build: WasmBuild }
    | { name: "cpu"; reason: string; build: WasmBuild; simd: string; threads: number; threadsReason: string; mode: "fast" | "exact" };
  loadSeconds: number;
  networkBytes: number;
  wasmMemoryBytes: number | null;
  /** Chat requests that decode together: the `parallel` option, capped to what the memory
   * plan fits. */
  parallel: number;
  /** The GPU memory planned from the headers before the download (`unplanned`: why not). */
  memoryPlan:
    | { quant: string; textWeightBytes: number; visionWeightBytes: number; stateBytes: number; otherBytes: number;
        totalBytes: number; budgetBytes: number | null; context: number; largestContext: number | null;
        /** Requests that fit decoding together (each a context of `context` tokens): the
         * engine's `parallel` is capped to it. */
        largestParallel: number }
    | { unplanned: string };
  /** A repository's conversion: "stored" in Cache Storage by this load, "reused" from an
   * earlier one, or "not stored: why" (a full cache; `cacheName: null`). */
  converted?: { url: string; quant: RepoQuant; state: string };
}

/** A remote engine's info: the server and the model its requests name. */
export interface RemoteModelInfo {
  remote: true;
  /** The base URL, without a trailing slash. */
  baseURL: string;
  /** The model id requests name when they name none. */
  model: string;
  /** The same id (what a local engine's `name` is). */
  name: string;
  /** Every model id the server lists. */
  models: string[];
  ownedBy: string | null;
  /** The server's context length where it says (vLLM's `max_model_len`), else null. */
  maxContext: number | null;
  /** Unknown: OpenAI's model object does not say whether the model takes images. */
  vision: null;
  /** Set when `fallback: "remote"` was taken: the local load's error. */
  fallback: { reason: "NoWebGPUError" | "AdapterTooSmallError"; message: string } | null;
}

/** A `fetch` that serves OpenAI's routes from the engine, with no network: `POST
 * …/chat/completions` and `POST …/responses` (JSON, or `text/event-stream` with `stream:
 * true`), `GET …/responses/{id}`, `GET …/models`,
 * `GET …/models/{id}`; errors as `{error: {message, type, param, code}}` with their status. */
export type OpenAIFetch = (input: RequestInfo | URL, init?: RequestInit) => Promise<Response>;

interface EngineBase<Info> {
  info: Info;
  chat: {
    completions: {
      create(request: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
      create(request: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
    };
  };
  responses: {
    create(request: ResponsesRequest & { stream: true }): Promise<AsyncIterable<ResponseStreamEvent>>;
    create(request: ResponsesRequest & { stream?: false }): Promise<ResponseObject>;
    /** A stored response, or null (not stored, or evicted). */
    retrieve(id: string): Promise<ResponseObject | null>;
  };
  /** For OpenAI's SDKs: `new OpenAI({ baseURL: "http://webvlm.local/v1", apiKey: "unused",
   * fetch: engine.fetch, dangerouslyAllowBrowser: true })`. */
  fetch: OpenAIFetch;
  /** Runs requests (an array or OpenAI batch JSONL): in the page, decoding together up to
   * the engine option `parallel` at a time; a remote engine sends them one after another.
   * Failures are reported per request and the batch goes on; results in input order. */
  batch(input: BatchRequest[] | string, options?: { onProgress?: (p: BatchProgress) => void; signal?: AbortSignal }): Promise<BatchResult[]>;
  unload(): Promise<void>;
}

/** The wasm builds (`engine.info.backend.build`). */
export type WasmBuild = "relaxed" | "simd128" | "relaxed-threads" | "simd128-threads";

/** What `engine.stats()` reports. */
export interface EngineStats {
  /** GPUBuffers alive (created, neither destroyed nor collected) and their bytes; `created`
   * counts every buffer made. */
  gpuBuffers: { live: number; bytes: number; created: number };
  /** The wasm heap's size (`WebAssembly.Memory`; it only grows). */
  wasmMemoryBytes: number | null;
  promptCache?: { liveTokens: number; savedTokens: number[]; savedBytes: number; budgetBytes: number; evicted: number };
  /** Chat requests that ran together with others (in groups of requests made together, and
   * those that joined them), and the largest group. */
  concurrent?: { requests: number; widest: number };
  /** The CPU backend's pool: its threads, the workers started so far (Web Workers start
   * asynchronously) and how many times one joined an op. */
  cpuPool?: { threads: number; workersStarted: number; workerJoins: number };
}

/** An engine running the model in this page. */
export interface Engine extends EngineBase<ModelInfo> {
  /** Teacher-forced logits `[tokens.length * vocab]` (tests; ids hold expanded image layouts). */
  logits(tokens: number[], images?: string[]): Promise<Float32Array>;
  /** Memory figures between requests (the soak test samples them). GPU buffers are counted
   * where the engine runs (its worker): GPUDevice.createBuffer adds, GPUBuffer.destroy or the
   * buffer's garbage collection takes off. `gc` collects garbage first where `gc()` is
   * exposed (Chromium's `--js-flags=--expose-gc`). */
  stats(options?: { gc?: boolean }): Promise<EngineStats>;
  /** Ends the running generation (or the request `requestId`) after the current token. */
  stop(requestId?: number): void;
  /** Loads the model again on a new GPU device, after a `DeviceLostError` (the running
   * request and every later one fail until then): weights from Cache Storage, where the
   * first load stored them (no download unless `cacheName: null`), local Files read again.
   * Resolves with the new `info` (also `engine.info`); the next request works as before. */
  reload(options?: { onProgress?: (p: LoadProgress) => void }): Promise<ModelInfo>;
}

/** An engine whose requests go to an OpenAI-compatible server. Requests run side by side
 * (not queued); an aborted plain request rejects with an AbortError, an aborted stream ends
 * with a chunk whose finish_reason is "abort". Server errors are the named errors with
 * `status`: 400 BadRequestError, 401/403 AuthenticationError, 404 for the model
 * ModelNotSupportedError, others RemoteServerError; no connection: NetworkError. */
export interface RemoteEngine extends EngineBase<RemoteModelInfo> {
  /** Rejects with BadRequestError: logits need the weights. */
  logits(tokens: number[], images?: string[]): Promise<never>;
  /** Aborts every request in flight. */
  stop(): void;
}

export function createEngine(options: CreateEngineOptions & { remote: RemoteOptions; fallback: "remote" }): Promise<Engine | RemoteEngine>;
export function createEngine(options: CreateEngineOptions & { remote?: undefined; fallback?: undefined }): Promise<Engine>;
export function createEngine(options: RemoteEngineOptions & { model?: undefined }): Promise<RemoteEngine>;

export interface CachedModel { url: string; bytes: number; chunks: number; size: number | null; complete: boolean }
export function cacheContents(cacheName?: string): Promise<{ entries: CachedModel[]; bytes: number }>;
export function deleteCached(url?: string, cacheName?: string): Promise<boolean>;
export const DEFAULT_CACHE: string;

export class WebvlmError extends Error {}
export class NoWebGPUError extends WebvlmError {}
export class AdapterTooSmallError extends WebvlmError {}
export class ModelNotSupportedError extends WebvlmError {
  /** From a remote engine: the server's 404 naming the model. */
  status?: number;
  type?: string;
  code?: string | null;
  param?: string | null;
}
export class DownloadError extends WebvlmError {}
export class QuotaExceededError extends WebvlmError {}
/** The GPU device was lost: the running request and every later one fail until
 * `engine.reload()` loads the model again on a new device. */
export class DeviceLostError extends WebvlmError {}
export class BadRequestError extends WebvlmError {
  /** OpenAI's error fields: "invalid_request_error", a code such as "invalid_value",
   * "unknown_parameter" or "context_length_exceeded", and the request field at fault. */
  type?: string;
  code?: string | null;
  param?: string | null;
  /** From a remote engine: the server's HTTP status (400, 413 or 422). */
  status?: number;
}
export class EngineUnloadedError extends WebvlmError {}
/** A stream's reader stopped reading for `streamStallMs`: the generation was cut. */
export class StreamStalledError extends WebvlmError {}
/** The server refused the API key (HTTP 401 or 403). */
export class AuthenticationError extends WebvlmError {
  status: number;
  type?: string;
  code?: string | null;
  param?: string | null;
}
/** Another error status from the server: 429 (rate limited), 5xx, a 404 not about the model. */
export class RemoteServerError extends WebvlmError {
  status: number;
  type?: string;
  code?: string | null;
  param?: string | null;
}
/** The server could not be reached (connection, DNS, TLS, or no CORS headers for this origin). */
export class NetworkError extends WebvlmError {}

/** Batch results as JSONL (one result object per line). */
export function toJSONL(results: BatchResult[]): string;
/** Batch results as CSV: custom_id, status, finish_reason, content, prompt_tokens, completion_tokens, error. */
export function toCSV(results: BatchResult[]): string;
