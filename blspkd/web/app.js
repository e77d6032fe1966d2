// The page of blspkd.bin.serve: record or pick audio, choose a task or write an instruction, stream the answer from
// POST /v1/chat/completions (OpenAI's chat format with an input_audio part, server-sent events).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { config: null, model: "", audio: null, format: null, seconds: null, recorder: null, busy: false };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function formatOf(blob, name) {
  // what the server expects in input_audio.format; it decodes by content, this names the file in its errors
  const ext = (name || "").split(".").pop().toLowerCase();
  const known = ["wav", "mp3", "flac", "ogg", "webm", "opus", "m4a", "mp4", "aac"];
  if (known.includes(ext)) return ext;
  const sub = (blob.type.split("/")[1] || "").split(";")[0].toLowerCase();
  if (sub === "mpeg") return "mp3";
  if (sub === "x-wav" || sub === "wave") return "wav";
  return known.includes(sub) ? sub : "wav";
}

async function setAudio(blob, name) {
  state.audio = blob;
  state.format = formatOf(blob, name);
  const player = $("player");
  player.src = URL.createObjectURL(blob);
  player.hidden = false;
  state.seconds = null;
  player.onloadedmetadata = () => {
    if (Number.isFinite(player.duration)) {
      state.seconds = player.duration;
      showAudioInfo(name);
    }
  };
  showAudioInfo(name);
  $("send").disabled = state.busy;
  setStatus("Ready: press Ask.");
}

function showAudioInfo(name) {
  const size = (state.audio.size / 1024).toFixed(0);
  const dur = state.seconds === null ? "" : `, ${state.seconds.toFixed(1)} s`;
  $("audio-info").textContent = `${name} (${state.format}, ${size} KiB${dur})`;
}

function taskInstruction(task) {
  if (!task.instruction) return "";
  return task.instruction.replace("{language}", $("language").value.trim() || state.config.language);
}

function selectedTask() {
  const checked = document.querySelector("#tasks input:checked");
  return state.config.tasks.find((t) => t.name === (checked && checked.value));
}

function onTaskChange() {
  const task = selectedTask();
  $("language-row").hidden = !task.needs_language;
  $("instruction").value = taskInstruction(task);
}

async function loadConfig() {
  const response = await fetch("/api/config");
  state.config = await response.json();
  $("max-seconds").textContent = state.config.max_audio_seconds;
  $("language").value = state.config.language;
  $("key-row").hidden = !state.config.auth_required;
  const box = $("tasks");
  state.config.tasks.forEach((task, i) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "task";
    input.value = task.name;
    input.id = `task-${task.name}`;
    input.checked = i === 0;
    input.addEventListener("change", onTaskChange);
    label.append(input, task.name);
    box.append(label);
  });
  $("language").addEventListener("input", onTaskChange);
  onTaskChange();
  if (!state.config.auth_required) await loadModel({});
}

async function toggleRecording() {
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    setStatus("This browser cannot record on this page (browsers record only on localhost or https); choose a file.",
              true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    setStatus(`No microphone: ${e.message}`, true);
    return;
  }
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    $("record").classList.remove("recording");
    $("record").textContent = "\u25CF Record";
    const type = recorder.mimeType || "audio/webm";
    setAudio(new Blob(chunks, { type }), `recording.${formatOf(new Blob([], { type }), "")}`);
  };
  recorder.start();
  state.recorder = recorder;
  $("record").classList.add("recording");
  $("record").textContent = "\u25A0 Stop";
  setStatus(`Recording... press Stop (at most ${state.config.max_audio_seconds} s).`);
  setTimeout(() => state.recorder === recorder && recorder.stop(), state.config.max_audio_seconds * 1000);
}

function base64Of(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

function showStats(stats, usage) {
  $("stat-duration").textContent = `${stats.audio_seconds.toFixed(2)} s`;
  $("stat-tokens").textContent = String(stats.num_speech_tokens);
  $("stat-completion").textContent = usage ? String(usage.completion_tokens) : "";
  $("stat-rtf").textContent = `${stats.real_time_factor.toFixed(3)} (${stats.seconds.toFixed(2)} s)`;
  $("stats").hidden = false;
}

async function ask() {
  if (!state.audio || state.busy) return;
  state.busy = true;
  $("send").disabled = true;
  $("answer").textContent = "";
  $("stats").hidden = true;
  setStatus("Sending...");
  const content = [];
  const instruction = $("instruction").value;  // as typed: a task's instruction may end with a space
  if (instruction.trim()) content.push({ type: "text", text: instruction });
  content.push({ type: "input_audio", input_audio: { data: await base64Of(state.audio), format: state.format } });
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value;
  if (key) headers.Authorization = `Bearer ${key}`;
  let stats = null, usage = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers,
      body: JSON.stringify({ model: state.model, stream: true, stream_options: { include_usage: true },
                             messages: [{ role: "user", content }] }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw new Error(`HTTP ${response.status}: ${body.error.message}`);
    }
    setStatus("Answering...");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        if (chunk.blspkd) stats = chunk.blspkd;
        for (const choice of chunk.choices) {
          if (choice.delta && choice.delta.content) $("answer").textContent += choice.delta.content;
        }
      }
    }
    if (stats) showStats(stats, usage);
    setStatus("Done.");
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    state.busy = false;
    $("send").disabled = !state.audio;
  }
}

async function loadModel(headers) {
  const response = await fetch("/v1/models", { headers });
  if (!response.ok) return false;
  state.model = (await response.json()).data[0].id;
  $("model-name").textContent = state.model;
  return true;
}

async function onKeyChange() {
  // with --api_key the model id comes from /v1/models once a key is typed
  const key = $("api-key").value;
  if (!key) return;
  if (await loadModel({ Authorization: `Bearer ${key}` })) setStatus("Key accepted.");
  else setStatus("The server does not accept this key.", true);
}

window.addEventListener("DOMContentLoaded", () => {
  $("record").addEventListener("click", toggleRecording);
  $("file").addEventListener("change", (e) => e.target.files[0] && setAudio(e.target.files[0], e.target.files[0].name));
  $("send").addEventListener("click", ask);
  $("api-key").addEventListener("change", onKeyChange);
  loadConfig().catch((e) => setStatus(`Cannot reach the server: ${e.message}`, true));
});
