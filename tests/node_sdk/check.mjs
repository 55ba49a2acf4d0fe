// Drives a running keygate with the official Node `openai` SDK, using clients built exactly as
// an application would: `new OpenAI({ baseURL, apiKey })`, so with the SDK's default retries
// (2) and timeout. Prints one JSON line on stdout; tests/node_sdk.rs asserts on it and on what
// the gateway and the mock upstream saw. Each call sends its own message text, so the Rust
// side can tell the calls apart in the mock's records.
//
// Environment: KEYGATE_BASE_URL (…/v1), KEYGATE_METRICS_URL (the admin listener's /metrics),
// KEYGATE_BUDGET_KEY (a monthly budget smaller than one request's worst case),
// KEYGATE_RPM_KEY (requests_per_minute = 1), KEYGATE_BUSY_KEY (max_concurrent_requests = 1),
// KEYGATE_SLOW_MS (how long the mock holds the request that fills the busy key's slot).

import { readFileSync } from 'node:fs';
import OpenAI from 'openai';

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const baseURL = env('KEYGATE_BASE_URL');
const metricsURL = env('KEYGATE_METRICS_URL');
const slowMs = Number(env('KEYGATE_SLOW_MS'));
const sdkVersion = JSON.parse(
  readFileSync(new URL('./node_modules/openai/package.json', import.meta.url), 'utf8'),
).version;

const chat = (text) => ({ model: 'deepseek-chat', messages: [{ role: 'user', content: text }] });

/** Runs a call and describes how it ended, with its duration in milliseconds. */
async function timed(call) {
  const started = performance.now();
  try {
    const r = await call();
    return { ok: true, ms: performance.now() - started, content: r.choices[0].message.content };
  } catch (err) {
    return { ok: false, ms: performance.now() - started, ...describe(err) };
  }
}

function describe(err) {
  if (!(err instanceof OpenAI.APIError)) throw err;
  return {
    error_class: err.constructor.name,
    status: err.status ?? null,
    code: err.code ?? null,
    retry_after: err.headers?.get('retry-after') ?? null,
    should_retry: err.headers?.get('x-should-retry') ?? null,
  };
}

async function metric(line) {
  const text = await (await fetch(metricsURL)).text();
  const found = text.split('\n').find((l) => l.startsWith(`${line} `));
  return found ? Number(found.slice(line.length + 1)) : 0;
}

const out = { sdk_version: sdkVersion };

// 1. A budget refusal carries `x-should-retry: false`: the default client gives up at once.
out.budget = await timed(() =>
  new OpenAI({ baseURL, apiKey: env('KEYGATE_BUDGET_KEY') }).chat.completions.create(chat('budget')),
);

// 2. requests_per_minute = 1: the refusal's retry-after is the whole minute (60 s), and the
// default client sleeps it out rather than retrying sooner. A test cannot wait a minute, so the
// default client's call is watched for 3 s (it must still be pending, after one attempt) and
// then abandoned when this process exits; a maxRetries: 0 probe reads the refusal's headers.
const rpm = new OpenAI({ baseURL, apiKey: env('KEYGATE_RPM_KEY') });
out.rpm_first = await timed(() => rpm.chat.completions.create(chat('rpm-first')));
out.rpm_probe = await timed(() =>
  rpm.chat.completions.create(chat('rpm-probe'), { maxRetries: 0 }),
);
{
  const started = performance.now();
  const call = timed(() => rpm.chat.completions.create(chat('rpm-default')));
  const watched = await Promise.race([
    call,
    new Promise((resolve) => setTimeout(() => resolve('pending'), 3000)),
  ]);
  out.rpm_default = {
    pending: watched === 'pending',
    watched_ms: performance.now() - started,
    ended: watched === 'pending' ? null : watched,
  };
}

// 3. max_concurrent_requests = 1: while a slow request holds the key's only slot, a second
// call is refused with a retry-after of 1 s; the slow request ends sooner than that, so the
// default client's retry, made after the retry-after, succeeds.
const busy = new OpenAI({ baseURL, apiKey: env('KEYGATE_BUSY_KEY') });
const slow = timed(() =>
  busy.chat.completions.create(chat('busy-slow'), { headers: { 'x-mock-delay-ms': String(slowMs) } }),
);
const waitUntil = performance.now() + 5000;
while ((await metric('keygate_inflight_requests')) < 1) {
  if (performance.now() > waitUntil) throw new Error('the slow request never reached keygate');
  await new Promise((resolve) => setTimeout(resolve, 5));
}
out.busy_probe = await timed(() =>
  busy.chat.completions.create(chat('busy-probe'), { maxRetries: 0 }),
);
out.busy_retried = await timed(() => busy.chat.completions.create(chat('busy-retried')));
out.busy_slow = await slow;

console.log(JSON.stringify(out));
// The abandoned rpm call is still sleeping out its retry-after: end without waiting for it.
process.exit(0);
