-- Argo CD health check for cryptoviz.io/CryptoPipeline, from the operator's status conditions:
--   Suspended   Paused=True (spec.paused or the cryptoviz.io/pause-reconciliation annotation)
--   Healthy     Ready=True for the current generation
--   Progressing no status yet, the operator has not observed this generation, Ready missing,
--               or Ready=False while the phase is Progressing
--   Degraded    Ready=False otherwise (the Ready message says which component and why)
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
local ready = nil
local paused = nil
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    ready = c
  elseif c.type == "Paused" then
    paused = c
  end
end
if paused ~= nil and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = paused.message or "Reconciliation paused"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end
local phase = obj.status.phase
if ready.status ~= "False" or phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = ready.message or "Progressing"
  return hs
end
hs.status = "Degraded"
hs.message = ready.message or ready.reason or "Not ready"
return hs
