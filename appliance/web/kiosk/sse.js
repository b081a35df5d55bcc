// OpenAI's streamed chat completion (server-sent events, `data: {chunk}` ... `data: [DONE]`) read from a
// fetch Response: calls onDelta(piece, answerSoFar) for each piece of content and resolves with the whole
// answer. An error sent inside the stream (`data: {"error": {...}}`, after the 200) rejects with its
// message, so a broken answer is shown as one, not as a short answer. Shared by the kiosk page
// (/kiosk/sse.js on the inference port) and the console (/static/kiosk/sse.js on the API port).
export async function readChatStream(res, onDelta) {
  const reader = res.body.getReader(), decoder = new TextDecoder();
  let buffer = "", answer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split("\n\n"); buffer = events.pop();
    for (const ev of events) {
      const data = ev.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || "the answer failed");
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) { answer += piece; onDelta(piece, answer); }
    }
  }
  return answer;
}
