// The page's own tools, which the model may call when its chat template writes tool calls
// (`info.tools`) and Settings allow it: a calculator and the current time. The page runs a
// call itself (nothing leaves the device), shows it and its result as a card in the
// transcript, and sends the result back for the model's answer.

import { el } from "./helpers.js";
import { state } from "./state.js";

/** Requests a turn may take: the first, and follow-ups with the tools' results. */
export const MAX_TOOL_ROUNDS = 3;

const TOOLS = {
  calculate: {
    description: "Evaluate an arithmetic expression (+ - * / ^ and parentheses), e.g. \"2 * (3 + 4) ^ 2\"",
    parameters: { type: "object", properties: { expression: { type: "string", maxLength: 200 } }, required: ["expression"] },
    run: ({ expression }) => ({ result: evaluate(String(expression ?? "")) }),
  },
  current_time: {
    description: "The current date and time, in an IANA time zone such as \"Europe/Paris\" (default: the user's)",
    parameters: { type: "object", properties: { timezone: { type: "string", maxLength: 40 } } },
    run: ({ timezone } = {}) => {
      const timeZone = timezone || undefined;
      return { time: new Date().toLocaleString("en-GB", { timeZone, dateStyle: "full", timeStyle: "long" }), timezone: timeZone ?? Intl.DateTimeFormat().resolvedOptions().timeZone };
    },
  },
};

/** The request fields that offer the tools (none when the model or Settings say no) in a
 * turn's `round`-th request: the first takes Settings' `tool_choice` (`auto`, or the URL's
 * for this visit), follow-ups `auto`, the last `none`. */
export function toolOptions(round) {
  if (!state.settings.tools || !state.info?.tools || state.info?.remote) return {};
  const tools = Object.entries(TOOLS).map(([name, t]) => ({ type: "function", function: { name, description: t.description, parameters: t.parameters } }));
  // The last round must answer: no more calls.
  const choice = round === 0 ? state.settings.tool_choice : round + 1 >= MAX_TOOL_ROUNDS ? "none" : "auto";
  return { tools, tool_choice: choice };
}

/** Runs one call (`{id, function: {name, arguments}}`): its result, or `{error}`. */
export function runTool(call) {
  const tool = TOOLS[call.function.name];
  try {
    if (!tool) throw new Error(`no tool named ${call.function.name}`);
    return tool.run(JSON.parse(call.function.arguments || "{}"));
  } catch (e) {
    return { error: String(e?.message ?? e) };
  }
}

/** The transcript card of a call and its result. */
export function toolCard(call, result) {
  const failed = "error" in result;
  return el("div", { class: "msg tool" },
    el("div", { class: "tool-card", dataset: { name: call.function.name, state: failed ? "error" : "done" } },
      el("div", { class: "tool-title" }, "Tool call · ", el("code", {}, call.function.name)),
      el("pre", { class: "tool-args" }, call.function.arguments),
      el("div", { class: "tool-result" }, failed ? `Error: ${result.error}` : JSON.stringify(result))));
}

/** `expression`'s value: numbers, + - * / ^ (right-associative), unary minus, parentheses. */
export function evaluate(expression) {
  const tokens = expression.match(/\d+(?:\.\d+)?(?:e[+-]?\d+)?|[-+*/^()]|\S/gi) ?? [];
  let i = 0;
  const peek = () => tokens[i];
  const take = (t) => {
    if (tokens[i] !== t) throw new Error(`expected ${t} at ${tokens[i] ?? "the end"}`);
    i++;
  };
  const atom = () => {
    const t = tokens[i++];
    if (t === "(") {
      const v = sum();
      take(")");
      return v;
    }
    if (t === "-") return -power();
    if (t === "+") return power();
    if (t !== undefined && /^\d/.test(t)) return Number(t);
    throw new Error(`unexpected ${t ?? "end"} in the expression`);
  };
  const power = () => {
    const base = atom();
    if (peek() !== "^") return base;
    i++;
    return base ** power();
  };
  const product = () => {
    let v = power();
    while (peek() === "*" || peek() === "/") v = tokens[i++] === "*" ? v * power() : v / power();
    return v;
  };
  const sum = () => {
    let v = product();
    while (peek() === "+" || peek() === "-") v = tokens[i++] === "+" ? v + product() : v - product();
    return v;
  };
  const value = sum();
  if (i < tokens.length) throw new Error(`unexpected ${tokens[i]} in the expression`);
  return value;
}
