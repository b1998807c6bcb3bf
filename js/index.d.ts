// Type declarations for the webvlm package (index.js).

/** A URL (its SHA-256 is checked when the server publishes one: Hugging Face's X-Linked-ETag),
 * a local File/Blob, or either with an explicit `sha256` (64 hex digits) to verify. */
export type ModelSource = string | URL | Blob | File | { url: string; sha256?: string } | { blob: Blob; name?: string; sha256?: string };

export interface LoadProgress {
  /** "download" (bytes from the network), "cache" (from Cache Storage), "ready". */
  phase: "download" | "cache" | "ready";
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
  /** Tokens per prefill chunk (default 128). */
  maxChunk?: number;
  /** f16 matmuls where the adapter has shader-f16 (the KV cache is f16 by default). */
  f16?: boolean;
  /** f16 KV cache (default true: half the memory, any adapter). */
  kvF16?: boolean;
  /** Requantize the vision matrices at load time: "q8_0" | "q4_1" | "q4_0". */
  visionQuant?: "q8_0" | "q4_1" | "q4_0";
}

export interface CreateEngineOptions {
  model: { text: ModelSource; mmproj?: ModelSource };
  onProgress?: (p: LoadProgress) => void;
  /** Run the engine in a module worker (default true). */
  worker?: boolean;
  engine?: EngineOptions;
  /** Cache Storage name for weight chunks (default "webvlm-weights-v1"). */
  cacheName?: string;
  /** Download chunk size in bytes (default 32 MiB). */
  chunkBytes?: number;
  /** Cancels the load: the worker ends, the promise rejects with DownloadError; chunks
   * already stored stay cached for the next attempt. */
  signal?: AbortSignal;
}

export type ContentPart =
  | { type: "text"; text: string }
  | { type: "image_url"; image_url: { url: string } | string };

export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string | ContentPart[];
}

export interface ChatCompletionRequest {
  messages: ChatMessage[];
  max_tokens?: number;
  max_completion_tokens?: number;
  /** 0 = greedy (the default). */
  temperature?: number;
  top_p?: number;
  top_k?: number;
  seed?: number;
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  /** Longest image edge in pixels before tokenization (default 1540). */
  image_max_edge?: number;
  signal?: AbortSignal;
}

export interface Timings {
  timeToFirstToken: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  timings: Timings;
}

export type FinishReason = "stop" | "length" | "abort";

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: { index: number; message: { role: "assistant"; content: string }; finish_reason: FinishReason; logprobs: null }[];
  usage: Usage;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: { index: number; delta: { role?: "assistant"; content?: string }; finish_reason: FinishReason | null; logprobs: null }[];
  usage?: Usage;
}

export interface ModelInfo {
  architecture: string;
  name: string | null;
  layers: number;
  hidden: number;
  vocab: number;
  vision: boolean;
  weightBytes: number;
  maxContext: number;
  adapter: string;
  loadSeconds: number;
  networkBytes: number;
  wasmMemoryBytes: number | null;
}

export interface Engine {
  info: ModelInfo;
  chat: {
    completions: {
      create(request: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
      create(request: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
    };
  };
  /** Teacher-forced logits `[tokens.length * vocab]` (tests; ids hold expanded image layouts). */
  logits(tokens: number[], images?: string[]): Promise<Float32Array>;
  /** Ends the running generation (or the request `requestId`) after the current token. */
  stop(requestId?: number): void;
  unload(): Promise<void>;
}

export function createEngine(options: CreateEngineOptions): Promise<Engine>;

export interface CachedModel { url: string; bytes: number; chunks: number; size: number | null; complete: boolean }
export function cacheContents(cacheName?: string): Promise<{ entries: CachedModel[]; bytes: number }>;
export function deleteCached(url?: string, cacheName?: string): Promise<boolean>;
export const DEFAULT_CACHE: string;

export class WebvlmError extends Error {}
export class NoWebGPUError extends WebvlmError {}
export class AdapterTooSmallError extends WebvlmError {}
export class ModelNotSupportedError extends WebvlmError {}
export class DownloadError extends WebvlmError {}
export class QuotaExceededError extends WebvlmError {}
export class DeviceLostError extends WebvlmError {}
export class BadRequestError extends WebvlmError {}
export class EngineUnloadedError extends WebvlmError {}
