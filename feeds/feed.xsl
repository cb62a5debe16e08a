<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by publisher with the feeds: shows a feed opened in a browser as a page. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:atom="http://www.w3.org/2005/Atom" xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:content="http://purl.org/rss/1.0/modules/content/"
    exclude-result-prefixes="atom dc content">
<xsl:output method="html" encoding="UTF-8" indent="yes" doctype-system="about:legacy-compat"/>

<xsl:variable name="title" select="/rss/channel/title | /atom:feed/atom:title"/>
<xsl:variable name="feed-url"
    select="(/rss/channel/atom:link[@rel='self'] | /atom:feed/atom:link[@rel='self'])/@href"/>

<xsl:template match="/">
<html lang="{/rss/channel/language | /atom:feed/@xml:lang}">
<head>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title><xsl:value-of select="$title"/> (feed)</title>
<style>
:root { color-scheme: light dark; --muted: #666; --line: #ddd; --accent: #0b5cad; }
@media (prefers-color-scheme: dark) { :root { --muted: #aaa; --line: #444; --accent: #6cb0ff; } }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 46rem; padding: 1rem; line-height: 1.5;
       font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
a { color: var(--accent); }
h1 { margin: .5rem 0 0; font-size: 1.7rem; }
h2 { margin: 0; font-size: 1.25rem; }
header p, .meta, .count, footer { color: var(--muted); }
section { border-top: 1px solid var(--line); padding: 1rem 0; }
.count { font-size: .9rem; font-weight: normal; }
.subscribe { margin: .4rem 0; display: flex; flex-wrap: wrap; gap: .5rem; }
.subscribe a { border: 1px solid var(--line); border-radius: .4rem; padding: .1rem .6rem;
               text-decoration: none; }
ul { margin: .4rem 0 0; padding-left: 1.2rem; }
li { margin: .3rem 0; overflow-wrap: anywhere; }
.meta { font-size: .85rem; }
footer { border-top: 1px solid var(--line); padding-top: 1rem; font-size: .9rem; }
.feed-url { font-size: 1.05rem; overflow-wrap: anywhere; }
.feed-url code { border: 1px solid var(--line); border-radius: .4rem; padding: .2rem .5rem;
                 user-select: all; }
</style>
</head>
<body>
<header>
<p class="meta">This is a news feed<xsl:choose>
<xsl:when test="/rss"> (RSS)</xsl:when><xsl:otherwise> (Atom)</xsl:otherwise>
</xsl:choose>: a feed reader shows its new articles as they come.</p>
<h1><xsl:value-of select="$title"/></h1>
<p><xsl:value-of select="/rss/channel/description | /atom:feed/atom:subtitle"/></p>
<p>To subscribe, copy this address into your feed reader (Feedly, Inoreader, NetNewsWire,
Thunderbird, newsboat...):</p>
<p class="feed-url"><code><xsl:value-of select="$feed-url"/></code></p>
<p><a href="index.html">Every feed and topic</a></p>
</header>
<main>
<xsl:apply-templates select="/rss/channel/item | /atom:feed/atom:entry"/>
</main>
</body>
</html>
</xsl:template>

<xsl:template match="item">
<section>
<h2><a href="{link}"><xsl:value-of select="title"/></a></h2>
<p class="meta"><xsl:if test="dc:creator"><xsl:value-of select="dc:creator"/> · </xsl:if>
<xsl:value-of select="substring(pubDate, 6, 11)"/></p>
<xsl:if test="content:encoded">
<p><xsl:call-template name="text"><xsl:with-param name="html" select="description"/>
</xsl:call-template></p>
</xsl:if>
</section>
</xsl:template>

<xsl:template match="atom:entry">
<section>
<h2><a href="{atom:link[not(@rel) or @rel='alternate']/@href}">
<xsl:value-of select="atom:title"/></a></h2>
<p class="meta"><xsl:if test="atom:author/atom:name">
<xsl:value-of select="atom:author/atom:name"/> · </xsl:if>
<xsl:value-of select="substring(atom:published, 1, 10)"/></p>
<xsl:if test="atom:summary"><p><xsl:value-of select="atom:summary"/></p></xsl:if>
</section>
</xsl:template>

<!-- The text of escaped HTML without markup: &amp; &lt; &gt; &quot; &#x27; decoded. -->
<xsl:template name="text">
<xsl:param name="html"/>
<xsl:choose>
<xsl:when test="contains($html, '&amp;')">
<xsl:value-of select="substring-before($html, '&amp;')"/>
<xsl:variable name="rest" select="substring-after($html, '&amp;')"/>
<xsl:variable name="entity" select="substring-before($rest, ';')"/>
<xsl:choose>
<xsl:when test="$entity = 'amp'">&amp;</xsl:when>
<xsl:when test="$entity = 'lt'">&lt;</xsl:when>
<xsl:when test="$entity = 'gt'">&gt;</xsl:when>
<xsl:when test="$entity = 'quot'">&quot;</xsl:when>
<xsl:when test="$entity = '#x27' or $entity = '#39'">'</xsl:when>
<xsl:otherwise>&amp;</xsl:otherwise>
</xsl:choose>
<xsl:call-template name="text">
<xsl:with-param name="html" select="substring($rest, 1 + (string-length($entity) + 1) *
    number($entity = 'amp' or $entity = 'lt' or $entity = 'gt' or $entity = 'quot'
           or $entity = '#x27' or $entity = '#39'))"/>
</xsl:call-template>
</xsl:when>
<xsl:otherwise><xsl:value-of select="$html"/></xsl:otherwise>
</xsl:choose>
</xsl:template>
</xsl:stylesheet>
