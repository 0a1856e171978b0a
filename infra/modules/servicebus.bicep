// The Service Bus namespace (Entra ID only: local/SAS auth disabled, TLS 1.2), one queue per route of the
// route table and the reply queue (queues.json, generated from shared/routes.py). Role assignments are per
// queue: on the route queues the worker may only send and the function app receives (and, with
// functionQueueRole 'Owner', may read the queue length the Flex Consumption scale controller needs; see
// docs/deploy.md); on the reply queue it is the other way round: the function app may only send its
// synchronous answers, the worker may only receive them (each worker process reads its own session).

@description('Azure region.')
param location string

@description('Namespace name (globally unique, 6-50 characters).')
param namespaceName string

@description('Standard (default) or Premium.')
@allowed([
  'Standard'
  'Premium'
])
param sku string

@description('Messaging units when sku is Premium.')
@allowed([
  1
  2
  4
  8
  16
])
param premiumCapacity int

@description('The queues, from queues.json.')
param queues array

@description('The reply queue (session-enabled, short time to live), from queues.json.')
param replyQueue object

@description('Principal id of the worker identity (Data Sender on each route queue, Data Receiver on the reply queue).')
param workerPrincipalId string

@description('Principal id of the function app identity (receives from the route queues, Data Sender on the reply queue).')
param functionPrincipalId string

@description('Owner: Data Owner on each queue (receive plus the queue length for the scale controller). Receiver: Data Receiver only (scaling without queue length).')
@allowed([
  'Owner'
  'Receiver'
])
param functionQueueRole string

@description('Tags for every resource.')
param tags object

var dataSenderRoleId = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
var dataReceiverRoleId = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
var dataOwnerRoleId = '090c5cfd-751d-490a-894a-3ce6f1109419'
var functionRoleId = functionQueueRole == 'Owner' ? dataOwnerRoleId : dataReceiverRoleId

resource serviceBusNamespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: sku
    tier: sku
    capacity: sku == 'Premium' ? premiumCapacity : null
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource queueResources 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = [
  for queue in queues: {
    parent: serviceBusNamespace
    name: queue.name
    properties: {
      requiresSession: queue.requiresSession
      maxDeliveryCount: queue.maxDeliveryCount
      lockDuration: queue.lockDuration
      requiresDuplicateDetection: queue.requiresDuplicateDetection
      duplicateDetectionHistoryTimeWindow: queue.duplicateDetectionHistoryTimeWindow
      deadLetteringOnMessageExpiration: queue.deadLetteringOnMessageExpiration
      defaultMessageTimeToLive: queue.defaultMessageTimeToLive
    }
  }
]

resource replyQueueResource 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: serviceBusNamespace
  name: replyQueue.name
  properties: {
    requiresSession: replyQueue.requiresSession
    maxDeliveryCount: replyQueue.maxDeliveryCount
    lockDuration: replyQueue.lockDuration
    requiresDuplicateDetection: replyQueue.requiresDuplicateDetection
    deadLetteringOnMessageExpiration: replyQueue.deadLetteringOnMessageExpiration
    defaultMessageTimeToLive: replyQueue.defaultMessageTimeToLive
  }
}

resource workerSenders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (queue, i) in queues: {
    name: guid(queueResources[i].id, workerPrincipalId, dataSenderRoleId)
    scope: queueResources[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataSenderRoleId)
      principalId: workerPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource functionReceivers 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (queue, i) in queues: {
    name: guid(queueResources[i].id, functionPrincipalId, functionRoleId)
    scope: queueResources[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', functionRoleId)
      principalId: functionPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

// Scheduled retries (functions.retries) are sent by the function app to its own trigger queues: Data Owner
// includes sending; with the narrower Receiver role it needs Data Sender there as well.
resource functionRetrySenders 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (queue, i) in queues: if (functionQueueRole == 'Receiver') {
    name: guid(queueResources[i].id, functionPrincipalId, dataSenderRoleId)
    scope: queueResources[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataSenderRoleId)
      principalId: functionPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource workerReplyReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(replyQueueResource.id, workerPrincipalId, dataReceiverRoleId)
  scope: replyQueueResource
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataReceiverRoleId)
    principalId: workerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource functionReplySender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(replyQueueResource.id, functionPrincipalId, dataSenderRoleId)
  scope: replyQueueResource
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataSenderRoleId)
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output name string = serviceBusNamespace.name
output fullyQualifiedNamespace string = '${serviceBusNamespace.name}.servicebus.windows.net'
output replyQueueName string = replyQueueResource.name
